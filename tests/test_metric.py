"""``--metric l2``: the same top-K as a plain ``faiss.IndexFlatL2`` on the same (unnormalised) vectors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import faiss
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import framesim
from framesim.backbones import get_backbone
from framesim.cli import cli
from framesim.dataset import FrameDataset
from framesim.distance import UnnormalisedVectors
from framesim.embeddings import EmbeddingCache
from framesim.examples import load_examples


@pytest.fixture
def dataset_and_examples(make_video: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path]:
    videos = [make_video(f"v{i}.mp4", n_frames=40 + 10 * i, scene_starts=(0, 10 + 3 * i, 25 + i)) for i in range(3)]
    ds = tmp_path / "ds"
    framesim.extract(videos, ds, fps=10, progress=False)
    manifest = FrameDataset(ds).manifest()
    examples = tmp_path / "examples"
    examples.mkdir()
    for row in (3, 17, 30):  # frames of the dataset: one exact copy, two brightened ones
        image = (ds / manifest["path"].iloc[row]).read_bytes()
        pixels = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        edited = pixels if row == 3 else cv2.convertScaleAbs(pixels, alpha=0.9, beta=12)  # ex3: an exact copy
        cv2.imwrite(str(examples / f"ex{row}.png"), edited)
    return ds, examples


def test_l2_ranks_as_a_plain_index_flat_l2_on_the_same_vectors(dataset_and_examples: tuple[Path, Path]) -> None:
    ds, examples = dataset_and_examples
    k = 6
    result = framesim.match(examples, ds, ["tiny-image"], metric="l2", top_k=k, dedupe=0, progress=False)
    pairs = result.pairs
    assert list(pairs.columns[-3:]) == ["cosine", "inliers", "distance"]
    manifest = FrameDataset(ds).manifest()
    # the vectors match searched: unnormalised, from their own cache (not the cosine cache's)
    model = UnnormalisedVectors(get_backbone("tiny-image"))
    cache = EmbeddingCache(ds / "embeddings", model)
    frames = cache.get(list(manifest["sha256"]))
    assert np.abs(np.linalg.norm(frames, axis=1) - 1).max() > 0.5  # really not normalised
    found, _, _ = load_examples([examples])
    queries = cache.get([e.sha256 for e in found])
    flat = faiss.IndexFlatL2(frames.shape[1])
    flat.add(frames)
    squared, ids = flat.search(queries, k)
    for q, example in enumerate(found):
        mine = pairs[pairs["example"] == example.name].sort_values("rank")
        assert list(mine["frame_id"]) == list(manifest["frame_id"].iloc[ids[q]])
        assert np.allclose(mine["distance"], np.sqrt(squared[q]), rtol=1e-5, atol=1e-4)
        assert np.allclose(mine["score"], 1 / (1 + mine["distance"]), atol=1e-6)
        assert mine["distance"].is_monotonic_increasing and list(mine["rank"]) == list(range(1, k + 1))
    # the exact copy finds its source at distance 0
    best = pairs[pairs["rank"] == 1].set_index("example")
    assert best.loc["ex3.png", "frame_id"] == manifest["frame_id"].iloc[3]
    assert best.loc["ex3.png", "distance"] < 1e-3 and best.loc["ex3.png", "score"] > 0.999
    assert result.run["backbones"][0]["postprocess"]["metric"] == "l2"


def test_cli_l2_writes_distances_and_refuses_what_does_not_apply(dataset_and_examples: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    ds, examples = dataset_and_examples
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(cli, ["match", str(examples), "-d", str(ds), "-b", "tiny-image", "--metric", "l2",
                              "-k", "3", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "pairs.csv")
    assert "distance" in table and (table["distance"] >= 0).all() and len(table) == 9
    assert "top-K = 3 · by L2 distance" in (out / "report.html").read_text(encoding="utf-8")
    assert framesim.read_pairs(out)["distance"].equals(table["distance"])
    cosine = runner.invoke(cli, ["match", str(examples), "-d", str(ds), "-b", "tiny-image", "-k", "3", "-o",
                                 str(tmp_path / "cos"), "--score", "cosine", "-q", "--no-report"])
    assert cosine.exit_code == 0 and "distance" not in pd.read_csv(tmp_path / "cos" / "pairs.csv")
    for extra in (["--store", "faiss"], ["--whiten"], ["-k", "0", "--min-score", "0.5"]):
        bad = runner.invoke(cli, ["match", str(examples), "-d", str(ds), "-b", "tiny-image", "--metric", "l2",
                                  "-o", str(tmp_path / "bad"), "-q", *extra])
        assert bad.exit_code == 2, (extra, bad.output)
        assert bad.output.strip().splitlines()[-1].startswith("error: --metric l2 ranks an index built for the run")
