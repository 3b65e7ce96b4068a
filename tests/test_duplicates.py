"""framesim duplicates end to end: compiled videos whose copied spans we know, the real carphone pair, and
bad input (one video, no frames, a damaged manifest) giving one clear line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import framesim
from framesim.cli import cli
from framesim.duplicates import SEGMENT_COLUMNS, find_duplicates, read_duplicates

PHOTOS = ["skimage/astronaut.png", "skimage/coffee.png", "skimage/chelsea.png", "opencv-samples/fruits.jpg",
          "opencv-samples/baboon.jpg", "opencv-samples/building.jpg", "skimage/rocket.jpg",
          "opencv-samples/butterfly.jpg", "skimage/horse.png", "opencv-samples/home.jpg",
          "opencv-samples/starry_night.jpg", "skimage/motorcycle_left.png"]
SIZE = (320, 240)


def pan_frames(photo: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` BGR frames of a slow pan across ``photo`` (a shot with motion, not a still)."""
    h, w = photo.shape[:2]
    cw, ch = int(w * 0.7), int(h * 0.7)
    out = []
    for k in range(n):
        x = int((w - cw) * k / max(1, n - 1))
        y = int((h - ch) * 0.5)
        out.append(cv2.resize(photo[y:y + ch, x:x + cw], SIZE, interpolation=cv2.INTER_AREA))
    return out


def write(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, SIZE)
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def compiled(shared_media: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Source A (4 shots of 2.5 s at 25 fps), unrelated video B, and query C at 20 fps: 2 s of filler, then
    A's 3.0-7.0 s (resampled to 20 fps, so frames are dropped and times differ), then 2 s of filler."""
    root = tmp_path_factory.mktemp("dups")
    photos = [cv2.imread(str(shared_media / "images" / p)) for p in PHOTOS]
    a_frames = [f for p in photos[0:4] for f in pan_frames(p, 63)][:250]
    b_frames = [f for p in photos[4:7] for f in pan_frames(p, 50)]
    filler1, filler2 = pan_frames(photos[7], 40), pan_frames(photos[8], 40)
    copied = [a_frames[int(round(t * 25))] for t in np.arange(3.0, 7.0, 1 / 20)]
    a = write(root / "source A.mp4", a_frames, 25.0)
    b = write(root / "other.mp4", b_frames, 25.0)
    c = write(root / "compilation.mp4", filler1 + copied + filler2, 20.0)
    ds = root / "dataset"
    framesim.extract([a, b, c], ds, fps=2, progress=False)
    return {"root": root, "dataset": ds, "a": str(a), "b": str(b), "c": str(c)}


def test_compiled_copy_is_one_segment_with_known_extents(compiled: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = find_duplicates(compiled["dataset"], out_dir=out, progress=False, report=False)  # type: ignore[arg-type]
    seg = result.segments
    assert list(seg.columns[:len(SEGMENT_COLUMNS)]) == SEGMENT_COLUMNS
    ac = [compiled["a"], compiled["c"]]
    copies = seg[seg["video_a"].isin(ac) & seg["video_b"].isin(ac)]
    assert len(copies) == 1, seg
    row = copies.iloc[0]
    # video_a sorts first: "/.../compilation.mp4" < "/.../source A.mp4"
    assert row["video_a"] == compiled["c"] and row["video_b"] == compiled["a"]
    assert abs(row["start_a"] - 2.0) <= 0.55 and abs(row["end_a"] - 6.0) <= 0.55
    assert abs(row["start_b"] - 3.0) <= 0.55 and abs(row["end_b"] - 7.0) <= 0.55
    assert abs(row["offset_s"] - 1.0) <= 0.3
    assert row["n_frames"] >= 6
    # nothing pairs the unrelated video with anything at the copy's level of confidence
    other = seg[(seg["video_a"] == compiled["b"]) | (seg["video_b"] == compiled["b"])]
    assert other.empty or other["score"].max() < row["score"]
    # the files are the contract, and read back checked
    tables, info = read_duplicates(out)
    assert info["counts"]["segments"] == len(seg)
    pd.testing.assert_frame_equal(tables["segments"], seg, check_dtype=False)
    assert (out / "segments.csv").is_file() and (out / "frame_pairs.csv").is_file()


def test_frame_pairs_and_groups(compiled: dict[str, object]) -> None:
    result = find_duplicates(compiled["dataset"], min_score=0.6, progress=False, verify=False)  # type: ignore[arg-type]
    fp, groups = result.frame_pairs, result.groups
    assert len(fp) and (fp["score"] >= 0.6).all()
    assert (fp["video_a"] != fp["video_b"]).all()
    # every near-duplicate pair is A <-> C inside the copied span, at matching times (offset 1 s)
    assert set(map(frozenset, zip(fp["video_a"], fp["video_b"], strict=True))) == {frozenset((compiled["a"],
                                                                                               compiled["c"]))}
    t_a = np.where(fp["video_a"] == compiled["a"], fp["timestamp_a"], fp["timestamp_b"])
    t_c = np.where(fp["video_a"] == compiled["c"], fp["timestamp_a"], fp["timestamp_b"])
    # frames of one shot resemble each other, so a frame pairs with its shot's neighbours too; its best
    # match is the frame it was copied from (1 s earlier in C than in A)
    best = pd.DataFrame({"t_c": t_c, "off": t_a - t_c, "score": fp["score"]}).sort_values("score").groupby("t_c").last()
    assert np.median(np.abs(best["off"] - 1.0)) <= 0.3
    # keep one of each: one representative per group, and it is a member
    reps = groups.groupby("group")["representative"].nunique()
    assert (reps == 1).all()
    assert groups["representative"].isin(groups["frame_id"]).all()
    assert (groups.groupby("group").size() == groups.groupby("group")["size"].first()).all()


def test_cli_writes_outputs_and_report(compiled: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["duplicates", "-d", str(compiled["dataset"]), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "1 copied segment\n" in res.output
    for name in ("frame_pairs.parquet", "groups.parquet", "segments.parquet", "duplicates.json", "report.html"):
        assert (out / name).is_file(), name
    # `framesim report` rebuilds the duplicates page from the folder
    (out / "report.html").unlink()
    res = CliRunner().invoke(cli, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file()


@pytest.mark.slow
def test_carphone_pair_is_one_segment_covering_both(shared_media: Path, tmp_path: Path) -> None:
    videos = shared_media / "videos"
    ds = tmp_path / "ds"
    framesim.extract([videos / "carphone_pristine.mp4", videos / "carphone_distorted.mp4"], ds, fps=2, progress=False)
    seg = find_duplicates(ds, progress=False).segments
    assert len(seg) == 1, seg
    row = seg.iloc[0]
    for side in "ab":
        assert row[f"start_{side}"] <= 0.01 and row[f"end_{side}"] >= 3.9, row
    assert abs(row["offset_s"]) <= 0.01


def test_shot_reused_inside_one_video(shared_media: Path, tmp_path: Path) -> None:
    """--within: one video that shows the same 3 s shot at 0 s and again at 6 s."""
    photos = [cv2.imread(str(shared_media / "images" / p)) for p in PHOTOS[9:12]]
    shot = pan_frames(photos[0], 75)
    video = write(tmp_path / "loop.mp4", shot + pan_frames(photos[1], 75) + shot + pan_frames(photos[2], 50), 25.0)
    ds = tmp_path / "ds"
    framesim.extract([video], ds, fps=2, progress=False)
    seg = find_duplicates(ds, within_video_s=2.0, progress=False).segments
    assert len(seg) >= 1
    row = seg.iloc[0]
    assert row["video_a"] == row["video_b"] == str(video)
    assert abs(row["start_a"] - 0.0) <= 0.55 and abs(row["start_b"] - 6.0) <= 0.55
    assert abs(row["offset_s"] - 6.0) <= 0.3 and row["end_a"] - row["start_a"] >= 2.4


# -- bad input: one clear line, exit code 2 ----------------------------------------------------------------
def _one_line_error(args: list[str]) -> str:
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    return lines[0]


def test_one_video_dataset(make_video, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ds = tmp_path / "one"
    framesim.extract([make_video("only.mp4", n_frames=50)], ds, fps=2, progress=False)
    line = _one_line_error(["duplicates", "-d", str(ds), "-o", str(tmp_path / "o"), "-q"])
    assert "one video" in line and "--within" in line


def test_dataset_without_frames(tmp_path: Path) -> None:
    ds = tmp_path / "empty"
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"")
    framesim.extract([bad], ds, progress=False, on_error=lambda msg: None)  # a dataset, with no frames
    line = _one_line_error(["duplicates", "-d", str(ds), "-q"])
    assert "no frames" in line and str(ds) in line


def test_damaged_manifest(compiled: dict[str, object], tmp_path: Path) -> None:
    import shutil

    ds = tmp_path / "damaged"
    shutil.copytree(compiled["dataset"], ds)  # type: ignore[arg-type]
    (ds / "manifest.parquet").write_bytes(b"PAR1 this is not parquet")
    line = _one_line_error(["duplicates", "-d", str(ds), "-q"])
    assert "manifest.parquet" in line


def test_damaged_duplicates_json(compiled: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "out"
    find_duplicates(compiled["dataset"], out_dir=out, progress=False, report=False, verify=False)  # type: ignore[arg-type]
    (out / "duplicates.json").write_text("{not json")
    with pytest.raises(ValueError, match="duplicates.json: damaged"):
        read_duplicates(out)


@pytest.mark.slow
def test_segment_benchmark_on_shared_media_meets_the_targets(shared_media: Path, tmp_path: Path) -> None:
    """The issue's bar, on the real clips at 2 fps: segment AP >= 0.8, recall at 90 % precision >= 0.7,
    nothing reported in the copy-free queries at that operating point; through the CLI."""
    import json

    ds = tmp_path / "ds"
    framesim.extract([shared_media / "videos"], ds, fps=2, progress=False, on_error=lambda msg: None)
    out = tmp_path / "eval"
    res = CliRunner().invoke(cli, ["evaluate", str(ds), "--segments", "--filler", str(shared_media / "images"),
                                   "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "VSC 2022 matching-track µAP" in res.output
    summary = json.loads((out / "segment_evaluation.json").read_text())["summary"]
    assert summary["n_truth"] >= 20
    assert summary["segment_ap"] >= 0.8 and summary["recall_at_p90"] >= 0.7, summary
    assert summary["copy_free_predictions_at_p90"] == 0
    per_edit = pd.read_csv(out / "segment_metrics_per_edit.csv")
    assert len(per_edit) >= 6
    assert (out / "duplicates" / "report.html").is_file()
