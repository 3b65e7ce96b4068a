"""Near-identical consecutive frames share one CNN vector (framesim.dedupe)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from framesim.dataset import FrameDataset, extract
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD, frame_thumbnails, load_thumbnail, near_duplicate_runs
from framesim.images import jpeg_size, load_image
from framesim.matching import match


def _thumbs(values: dict[str, float]) -> dict[str, np.ndarray]:
    return {k: np.full(256, v, np.float32) for k, v in values.items()}


def test_runs_compare_with_the_representative_and_stop_at_video_boundaries() -> None:
    # A slow drift (0.001 per frame) stays in one run only while it is within the threshold of the
    # run's first frame; a new video always starts a new run.
    keys = ["a", "b", "c", "d", "e", "f"]
    videos = ["v1", "v1", "v1", "v1", "v2", "v2"]
    thumbs = _thumbs({"a": 0.500, "b": 0.501, "c": 0.502, "d": 0.503, "e": 0.503, "f": 0.9})
    runs = near_duplicate_runs(keys, videos, thumbs, threshold=0.0025)
    assert runs.vector_key == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f"}
    assert runs.representatives == ["a", "d", "e", "f"]
    assert runs.summary()["reused"] == 2


def test_threshold_zero_missing_thumbnail_and_repeated_keys() -> None:
    keys, videos = ["a", "b", "a", "c"], ["v", "v", "v", "v"]
    thumbs = _thumbs({"a": 0.5, "b": 0.5})  # "c" has no thumbnail (unreadable image)
    assert near_duplicate_runs(keys, videos, thumbs, threshold=0).saved == 0
    runs = near_duplicate_runs(keys, videos, thumbs, threshold=DEFAULT_DEDUPE_THRESHOLD)
    assert runs.vector_key == {"a": "a", "b": "a", "c": "c"}


def _noisy(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(photo.astype(np.int16) + rng.normal(0, 6, photo.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def still_shots(tmp_path: Path, shared_media: Path) -> Path:
    """7 s at 10 fps: photo A held 4 s, then photo B 3 s, each frame with fresh sensor-like noise."""
    images = shared_media / "images" / "opencv-samples"
    photos = [cv2.resize(cv2.imread(str(images / name)), (320, 240)) for name in ("building.jpg", "fruits.jpg")]
    path = tmp_path / "stills.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    rng = np.random.default_rng(0)
    for second in range(7):
        for _ in range(10):
            writer.write(_noisy(photos[0 if second < 4 else 1], rng))
    writer.release()
    return path


def test_still_shots_are_embedded_once_and_every_frame_is_still_matched(still_shots: Path, tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    extract([still_shots], ds, fps=1.0, progress=False)
    manifest = FrameDataset(ds).manifest()
    assert len(manifest) == 7
    examples = tmp_path / "examples"
    examples.mkdir()
    frame = cv2.imread(str(FrameDataset(ds).frame_path(manifest["path"][1])))
    cv2.imwrite(str(examples / "crop.png"), frame[20:220, 30:290])

    result = match(examples, ds, top_k=7, score="cosine", progress=False, out_dir=tmp_path / "run")
    assert result.run["dedupe"] == {"threshold": DEFAULT_DEDUPE_THRESHOLD, "frames": 7, "embedded": 2,
                                    "reused": 5, "reused_fraction": round(5 / 7, 4)}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dedupe"]["reused"] == 5
    assert result.run["backbones"][0]["frames_embedded"] == 2
    pairs = result.pairs.sort_values("timestamp_s")
    assert len(pairs) == 7  # every frame is still in the index
    cos = pairs["score"].to_numpy()
    assert np.ptp(cos[:4]) == 0 and np.ptp(cos[4:]) == 0  # a run shares its vector
    assert cos[:4].min() > cos[4:].max()  # the crop's own shot ranks first

    # Without dedupe every frame gets its own vector; the scores barely move (noise only).
    plain = match(examples, ds, top_k=7, score="cosine", progress=False, dedupe=0)
    assert plain.run["dedupe"]["reused"] == 0
    assert plain.run["backbones"][0]["frames_embedded"] == 5  # the 2 representatives were cached
    plain_cos = plain.pairs.sort_values("timestamp_s")["score"].to_numpy()
    assert np.abs(plain_cos - cos).max() < 0.02


def test_thumbnails_are_cached(still_shots: Path, tmp_path: Path) -> None:
    ds = FrameDataset(tmp_path / "ds")
    extract([still_shots], ds.root, fps=1.0, progress=False)
    manifest = ds.manifest()
    path_of = dict(zip(manifest["sha256"], manifest["path"], strict=True))
    first = frame_thumbnails(ds.root / "embeddings", list(path_of), lambda k: ds.frame_path(path_of[k]))
    expected = load_thumbnail(ds.frame_path(manifest["path"][0]))
    np.testing.assert_allclose(first[manifest["sha256"][0]], expected, atol=1e-3)  # float16 storage
    for p in manifest["path"]:
        ds.frame_path(p).unlink()  # a second call must not need the images any more
    again = frame_thumbnails(ds.root / "embeddings", list(path_of), lambda k: ds.frame_path(path_of[k]))
    assert again.keys() == first.keys()


def test_jpeg_size_and_reduced_decoding(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "f.jpg"), rgb)
    cv2.imwrite(str(tmp_path / "f.png"), rgb)
    assert jpeg_size(np.fromfile(tmp_path / "f.jpg", np.uint8)) == (1280, 720)
    assert jpeg_size(np.fromfile(tmp_path / "f.png", np.uint8)) is None
    assert jpeg_size(b"\xff\xd8\xff") is None  # truncated header
    assert load_image(tmp_path / "f.jpg").shape == (720, 1280, 3)
    assert load_image(tmp_path / "f.jpg", min_side=224).shape == (360, 640, 3)  # 1/2: 360 >= 224 > 180
    assert load_image(tmp_path / "f.jpg", min_side=90).shape == (90, 160, 3)  # 1/8
    assert load_image(tmp_path / "f.png", min_side=224).shape == (720, 1280, 3)  # not a JPEG: full size


def test_cli_dedupe_option(still_shots: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from framesim.cli import cli

    ds, examples = tmp_path / "ds", tmp_path / "examples"
    extract([still_shots], ds, fps=1.0, progress=False)
    examples.mkdir()
    first = FrameDataset(ds).frame_path(FrameDataset(ds).manifest()["path"][0])
    cv2.imwrite(str(examples / "a.png"), cv2.imread(str(first)))
    runs = {}
    for value in ("0", None):
        out = tmp_path / f"run-{value}"
        args = ["match", str(examples), "-d", str(ds), "-o", str(out), "-q", "--no-report", "-b", "tiny-image"]
        result = CliRunner().invoke(cli, args + (["--dedupe", value] if value else []))
        assert result.exit_code == 0, result.output
        runs[value] = json.loads((out / "run.json").read_text())["dedupe"]
    assert runs["0"]["reused"] == 0 and runs["0"]["threshold"] == 0
    assert runs[None]["reused"] == 5 and runs[None]["threshold"] == DEFAULT_DEDUPE_THRESHOLD
