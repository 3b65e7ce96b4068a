import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import pandas as pd
import pytest
from click.testing import CliRunner

from framesim.cli import cli
from framesim.matching import PAIRS_COLUMNS


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def make_examples(video: Path, folder: Path) -> None:
    folder.mkdir()
    cap = cv2.VideoCapture(str(video))
    for i in range(30):
        ok, bgr = cap.read()
        if i in (4, 22):
            cv2.imwrite(str(folder / f"ex{i}.jpg"), cv2.resize(bgr, (80, 60)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    cap.release()


def test_extract_then_match_in_process(runner: CliRunner, tmp_path: Path, make_video: Callable[..., Path]) -> None:
    video = make_video("clip.mp4", n_frames=30, fps=10, scene_starts=(0, 15))
    ds, run = tmp_path / "ds", tmp_path / "run"
    res = runner.invoke(cli, ["extract", str(video), "-o", str(ds), "--every", "3", "-q"])
    assert res.exit_code == 0, res.output
    assert "10 frames added" in res.output
    manifest = pd.read_parquet(ds / "manifest.parquet")
    assert manifest["frame_index"].tolist() == list(range(0, 30, 3))

    make_examples(video, tmp_path / "ex")
    res = runner.invoke(cli, ["match", str(tmp_path / "ex"), "-d", str(ds), "-b", "tiny-image", "-k", "2",
                              "-o", str(run), "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    pairs = pd.read_csv(run / "pairs.csv")
    assert list(pairs.columns)[:8] == PAIRS_COLUMNS and len(pairs) == 4  # extra columns may follow
    top1 = pairs[pairs["rank"] == 1].set_index("example")["frame_index"]
    assert top1["ex4.jpg"] < 15 <= top1["ex22.jpg"]
    meta = json.loads((run / "run.json").read_text())
    assert meta["n_frames"] == 10 and meta["backbones"][0]["name"] == "tiny-image"
    # per-stage seconds and the verification work in the summary; --verify picks the local features
    assert re.search(r"tiny-image: verified 20 of 20 candidate pairs \(0 cached, \d+ also mirrored\)", res.output)
    assert re.search(r"in [\d.]+ s \(.*verify [\d.]+ s\)", res.output)  # stages over 0.05 s
    res = runner.invoke(cli, ["match", str(tmp_path / "ex"), "-d", str(ds), "-b", "tiny-image", "-k", "2",
                              "-o", str(run), "-q", "--no-report", "--verify", "orb:320:500"])
    assert res.exit_code == 0, res.output
    verification = json.loads((run / "run.json").read_text())["backbones"][0]["postprocess"]["verification"]
    assert (verification["features"], verification["long_side"], verification["n_features"]) == ("orb", 320, 500)


def test_extract_reports_bad_video_on_one_line_and_goes_on(
    runner: CliRunner, tmp_path: Path, make_video: Callable[..., Path]
) -> None:
    good = make_video("good.mp4", n_frames=20, fps=10)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(5000))
    res = runner.invoke(cli, ["extract", str(bad), str(good), "-o", str(tmp_path / "ds"), "-q"])
    assert res.exit_code == 1
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "bad.mp4" in error_lines[0]
    assert pd.read_parquet(tmp_path / "ds" / "manifest.parquet")["video"].unique().tolist() == [str(good)]


def test_usage_errors_exit_2(runner: CliRunner, tmp_path: Path, make_video: Callable[..., Path]) -> None:
    video = make_video("v.mp4", n_frames=5)
    assert runner.invoke(cli, ["extract", str(video), "--every", "2", "--scene"]).exit_code == 2
    (tmp_path / "empty").mkdir()
    res = runner.invoke(cli, ["extract", str(tmp_path / "empty"), "-o", str(tmp_path / "ds")])
    assert res.exit_code == 2 and "no video files found" in res.stderr
    assert runner.invoke(cli, ["match", str(video), "-d", str(tmp_path)]).exit_code == 2  # empty dataset
    res = runner.invoke(cli, ["match", str(video), "-d", str(tmp_path), "-b", "nope"])
    assert res.exit_code == 2
    # weights for a backbone that was not chosen (a typo) would leave the chosen one on its default
    res = runner.invoke(cli, ["match", str(video), "-d", str(tmp_path), "-b", "resnet50:gem", "-b", "phash",
                              "--weights", "resnet5=w.h5"])
    assert res.exit_code == 2 and "'resnet5' is not one of the chosen backbones (resnet50:gem, phash)" in res.stderr
    weights_file = tmp_path / "a=b.weights.h5"  # one backbone: a file name holding "=" is still a file
    weights_file.write_bytes(b"")
    res = runner.invoke(cli, ["match", str(video), "-d", str(tmp_path), "-b", "resnet50", "--weights",
                              str(weights_file)])
    assert res.exit_code == 2 and "not one of the chosen" not in res.stderr and "no frames" in res.stderr
    for spec in ("surf", "orb:huge", "rootsift:640:9999"):
        res = runner.invoke(cli, ["match", str(video), "-d", str(tmp_path), "--verify", spec])
        assert res.exit_code == 2 and "--verify: verification" in res.stderr and "Traceback" not in res.output


def test_backbones_command_lists_weights_availability(runner: CliRunner) -> None:
    res = runner.invoke(cli, ["backbones"])
    assert res.exit_code == 0
    lines = {line.split()[0]: line for line in res.output.splitlines()[1:]}
    assert "yes" in lines["efficientnet-lite0"] and "1280" in lines["efficientnet-lite0"]
    assert "vgg16" in lines and "resnet101" in lines


@pytest.mark.slow
def test_installed_command_runs_end_to_end(tmp_path: Path, make_video: Callable[..., Path]) -> None:
    exe = shutil.which("framesim") or str(Path(sys.executable).with_name("framesim"))
    if not Path(exe).exists():
        pytest.skip("framesim is not installed (pip install -e .)")
    video = make_video("clip.mp4", n_frames=30, fps=10, scene_starts=(0, 15))
    make_examples(video, tmp_path / "ex")
    subprocess.run([exe, "extract", str(video), "-o", str(tmp_path / "ds"), "--fps", "2", "-q"], check=True)
    out = subprocess.run([exe, "match", str(tmp_path / "ex"), "-d", str(tmp_path / "ds"), "-q",
                          "-o", str(tmp_path / "run")], check=True, capture_output=True, text=True).stdout
    assert "report:" in out and (tmp_path / "run" / "report.html").stat().st_size > 10_000
    assert len(pd.read_parquet(tmp_path / "run" / "pairs.parquet")) == 2 * 6


def test_cli_defaults_are_the_librarys() -> None:
    from framesim.scoring import DEFAULT_CANDIDATES

    params = {p.name: p for p in cli.commands["match"].params}
    assert params["candidates"].default == DEFAULT_CANDIDATES
