"""Match-time post-processing: whitening, background similarity, the posterior score, verification."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import textured_image

from framesim.descriptors import BackgroundSimilarity, MatchPosterior, PCAWhitening, even_sample
from framesim.verification import VerifyParams
from framesim.verification import count_inliers as count_inliers_
from framesim.verification import local_features as local_features_
from framesim.verify_run import verify_pairs

# --------------------------------------------------------------------------------------------------
# PCA whitening


def _correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) * np.linspace(3, 0.1, d)[:, None]  # very unequal variances
    return (rng.standard_normal((n, d)) @ mix + 5.0).astype(np.float32)


def test_whitening_decorrelates_normalises_and_is_deterministic() -> None:
    x = _correlated(2000, 16)
    w = PCAWhitening(shrinkage=0.0).fit(x)
    y = (x - w.mean) @ w.projection  # before the L2 normalisation
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(16), atol=1e-2)
    out = w.apply(x[:10])
    assert out.dtype == np.float32 and out.shape == (10, 16)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    again = PCAWhitening(shrinkage=0.0).fit(x)
    assert np.array_equal(again.projection, w.projection) and np.array_equal(again.apply(x[:10]), out)
    assert w.describe() == {"method": "pca-whitening", "shrinkage": 0.0, "power": 0.5, "fit_frames": 2000}


def test_whitening_shrinkage_handles_fewer_frames_than_dimensions() -> None:
    x = _correlated(20, 64, seed=1)  # rank-deficient covariance
    w = PCAWhitening().fit(x)  # default shrinkage
    out = w.apply(_correlated(5, 64, seed=2))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    # Large shrinkage whitens less: the cosines tend to those of plain centring (the output is in
    # the PCA basis, a rotation, so compare cosines, not coordinates).
    heavy = PCAWhitening(shrinkage=1e6).fit(x).apply(x)
    centred = x - x.mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(heavy @ heavy.T, centred @ centred.T, atol=1e-3)
    light = PCAWhitening(shrinkage=0.1).fit(x).apply(x)
    assert np.abs(light @ light.T - centred @ centred.T).max() > 0.05
    with pytest.raises(ValueError):
        PCAWhitening().fit(x[:1])


def test_even_sample_is_deterministic_and_spread() -> None:
    assert even_sample(5, 10).tolist() == [0, 1, 2, 3, 4]
    s = even_sample(1000, 10)
    assert len(s) == 10 and s[0] == 0 and s[-1] == 999 and np.all(np.diff(s) > 90)


# --------------------------------------------------------------------------------------------------
# Background similarity


def _unit(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_background_leaves_out_the_best_candidates_video() -> None:
    frames = _unit([1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1])
    videos = np.array(["a", "a", "b", "b", "c"])
    bg = BackgroundSimilarity(k=2).fit(frames, videos, np.zeros(5))
    q = _unit([1, 0, 0])
    # Best candidate in video a: background = the 2 most similar frames of b and c (0.6 and 0).
    assert bg(q, np.array(["a"]), np.zeros(1))[0] == pytest.approx(0.3, abs=1e-6)
    # Were the best candidate in b, video a's near copies would be background: high level.
    assert bg(q, np.array(["b"]), np.zeros(1))[0] > 0.99
    assert not bg.single_video and bg.describe()["k"] == 2


def test_background_with_a_single_video_leaves_out_a_time_window() -> None:
    frames = _unit([1, 0], [1, 0.05], [0.8, 0.6], [0, 1])
    times = np.array([0.0, 1.0, 20.0, 40.0])
    bg = BackgroundSimilarity(k=1, window_s=5.0).fit(frames, np.array(["v"] * 4), times)
    assert bg.single_video
    q = _unit([1, 0])
    # The best candidate is at 0 s: the frame 1 s later is its neighbourhood, 20 s later is background.
    assert bg(q, np.array(["v"]), np.array([0.0]))[0] == pytest.approx(0.8, abs=1e-6)
    empty = BackgroundSimilarity(k=1, window_s=100.0).fit(frames, np.array(["v"] * 4), times)
    assert np.isnan(empty(q, np.array(["v"]), np.array([0.0]))[0])


# --------------------------------------------------------------------------------------------------
# Posterior score


def test_posterior_is_a_probability_monotone_in_the_evidence() -> None:
    post = MatchPosterior()
    rng = np.random.default_rng(0)
    cos = np.sort(rng.uniform(0.2, 0.9, (50, 8)), axis=1)[:, ::-1]
    bg = rng.uniform(0.2, 0.6, 50)
    p = post(cos, bg)
    assert p.shape == cos.shape and (p >= 0).all() and (p <= 1).all()
    assert (p.sum(axis=1) < 1).all()  # "none of them" keeps some probability
    assert (np.diff(p, axis=1) <= 1e-12).all()  # order of the cosines kept
    # Comparable across examples: shifting an example's cosines and background together changes nothing.
    np.testing.assert_allclose(post(cos + 0.1, bg + 0.1), p, rtol=1e-9)
    # More similar than the background -> higher; one candidate -> sigmoid((cos - bg) / T).
    one = post(np.array([[0.8], [0.7]]), np.array([0.5, 0.5]))[:, 0]
    np.testing.assert_allclose(one, 1 / (1 + np.exp(-np.array([0.3, 0.2]) / post.temperature)))
    # Padding is ignored and scores 0.
    valid = np.ones(cos.shape, bool)
    valid[:, 4:] = False
    q = post(cos, bg, valid=valid)
    assert (q[:, 4:] == 0).all() and (q[:, :4] >= p[:, :4]).all()


def test_posterior_with_inliers_favours_the_verified_frame_and_splits_ties() -> None:
    post = MatchPosterior()
    cos = np.array([[0.80, 0.79, 0.78]] * 2 + [[0.8, 0.8, 0.8]])
    bg = np.full(3, 0.6)
    inl = np.array([[0, 60, 2], [2, 3, 1], [50, 50, 50]], float)
    p = post(cos, bg, inl)
    assert p[0].argmax() == 1 and p[0, 1] > 0.99  # the only verified candidate wins despite its cosine
    assert p[1].max() < 0.5  # no verification: "none" stays likely
    np.testing.assert_allclose(p[2], p[2, 0])  # three equal copies share the probability
    assert p[2, 0] < 1 / 3
    # The same pixels twice (one frame stored in two videos) are one hypothesis: both get its probability.
    dup = post(np.array([[0.9, 0.9, 0.5]]), np.array([0.5]), groups=np.array([["a", "a", "b"]]))
    single = post(np.array([[0.9, 0.5]]), np.array([0.5]))
    np.testing.assert_allclose(dup[0], [single[0, 0], single[0, 0], single[0, 1]])
    assert post.describe(verified=True)["null_inliers"] == post.null_inliers
    assert "null_inliers" not in post.describe(verified=False)


# --------------------------------------------------------------------------------------------------
# Verification




@pytest.mark.parametrize("features", ["rootsift", "orb"])
def test_verification_counts_many_inliers_for_copies_and_few_for_others(features: str) -> None:
    params = VerifyParams(features=features)

    def local_features(img: np.ndarray) -> Any:
        return local_features_(img, params)

    def count_inliers(a: Any, b: Any) -> int:
        return count_inliers_(a, b, params)

    src, other = textured_image(1), textured_image(2)
    crop = src[60:300, 100:420]  # strong crop, then scaled
    crop = cv2.resize(crop, (crop.shape[1] * 2 // 3, crop.shape[0] * 2 // 3), interpolation=cv2.INTER_AREA)
    canvas = textured_image(3, (480, 640))
    canvas[100:280, 200:440] = cv2.resize(src, (240, 180), interpolation=cv2.INTER_AREA)  # picture-in-picture
    f_src, f_other = local_features(src), local_features(other)
    for copy in (crop, canvas):
        assert count_inliers(local_features(copy), f_src) >= 20
        assert count_inliers(local_features(copy), f_other) <= 6
    assert count_inliers(local_features(crop), f_src) == count_inliers(local_features(crop), f_src)  # seeded
    # A mirrored copy is found through the mirrored example (verify_pairs tries both).
    mirrored = src[:, ::-1].copy()
    assert count_inliers(local_features(mirrored), f_src) <= 6
    images = {"m": mirrored, "src": src, "other": other}
    counts, _ = verify_pairs([("m", "src"), ("m", "other")], images.__getitem__, images.__getitem__, params=params)
    assert counts[0] >= 20 and counts[1] <= 6
    # Unreadable images give 0 and a message, not an exception.
    errors: list[str] = []

    def broken(key: str) -> np.ndarray:
        raise OSError(f"{key}: cannot read")

    assert verify_pairs([("m", "x")], images.__getitem__, broken, on_error=errors.append)[0].tolist() == [0]
    assert errors and "cannot read" in errors[0]
    blank = np.zeros((50, 50, 3), np.uint8)
    assert count_inliers(local_features(blank), f_src) == 0


# --------------------------------------------------------------------------------------------------
# match(): score modes


@pytest.fixture
def textured_dataset(tmp_path: Path, make_video: Callable[..., Path]) -> tuple[Path, Path]:
    from framesim.dataset import extract

    video = make_video("scenes.mp4", n_frames=40, fps=10, size=(320, 240), scene_starts=(0, 10, 20, 30))
    dataset = tmp_path / "ds"
    assert extract([video], dataset, every=5, progress=False).ok
    return video, dataset


def _write_examples(video: Path, folder: Path) -> None:
    folder.mkdir()
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    for index in (3, 17, 24, 36):
        bgr = frames[index][20:220, 30:290]  # crop + rescale + JPEG
        bgr = cv2.resize(bgr, (bgr.shape[1] * 3 // 4, bgr.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"from{index}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 70])
    cv2.imwrite(str(folder / "distractor.jpg"), cv2.cvtColor(textured_image(9), cv2.COLOR_RGB2BGR))


def test_match_score_modes_and_postprocess_record(textured_dataset: tuple[Path, Path], tmp_path: Path) -> None:
    from framesim.matching import EXTRA_COLUMNS, PAIRS_COLUMNS, match, parse_match_spec

    video, dataset = textured_dataset
    _write_examples(video, tmp_path / "ex")
    result = match(tmp_path / "ex", dataset, ["tiny-image", "tiny-image@cosine", "tiny-image@normalized+whiten"],
                   top_k=3, progress=False, out_dir=tmp_path / "run")
    pairs = result.pairs
    assert list(pairs.columns) == PAIRS_COLUMNS + EXTRA_COLUMNS
    assert set(pairs["backbone"]) == {"tiny-image", "tiny-image@cosine", "tiny-image@normalized+whiten"}
    runs = {b["name"]: b["postprocess"] for b in result.run["backbones"]}
    assert runs["tiny-image"]["score"] == "verified" and runs["tiny-image"]["verification"]["n_features"] == 1000
    assert runs["tiny-image@cosine"] == {"score": "cosine", "whitening": None}
    assert runs["tiny-image@normalized+whiten"]["whitening"]["shrinkage"] == 1.0
    assert runs["tiny-image@normalized+whiten"]["whitening_fit_frames"] == 8
    assert result.run["postprocess"]["score"] == "verified" and result.run["postprocess"]["candidates"] == 20
    by = {name: g for name, g in pairs.groupby("backbone")}
    cosine = by["tiny-image@cosine"]
    assert (cosine["score"] == cosine["cosine"]).all() and (cosine["inliers"] == -1).all()
    verified = by["tiny-image"]
    assert verified["score"].between(0, 1).all() and (verified["inliers"] >= 0).all()
    top1 = verified[verified["rank"] == 1].set_index("example")
    for name, scene in [("from3.jpg", 0), ("from17.jpg", 1), ("from24.jpg", 2), ("from36.jpg", 3)]:
        assert scene * 10 <= top1.loc[name, "frame_index"] < scene * 10 + 10, name
        # Frames of one static scene are equally good hypotheses and share the probability (from36's two
        # candidates in its scene get 83 inliers each): the scene, not one of its frames, is > 0.5 likely.
        mine = verified[(verified["example"] == name) & verified["frame_index"].between(scene * 10, scene * 10 + 9)]
        assert mine["score"].sum() > 0.5 > top1.loc["distractor.jpg", "score"], name
    for _, g in verified.groupby("example"):
        assert g["score"].sum() <= 1 + 1e-6  # probabilities over the example's candidates
    assert (by["tiny-image@normalized+whiten"]["inliers"] == -1).all()
    # min_score filters on the final score; top_k=None keeps every candidate above it.
    above = match(tmp_path / "ex", dataset, ["tiny-image"], top_k=None, min_score=0.5, progress=False).pairs
    confident = set(verified.loc[verified["score"] >= 0.5, "example"])
    assert (above["score"] >= 0.5).all() and set(above["example"]) == confident
    assert {"from3.jpg", "from17.jpg", "from24.jpg"} <= confident and "distractor.jpg" not in confident
    assert parse_match_spec("efficientnet-lite0:avg@cosine") == ("efficientnet-lite0:avg", "cosine", False, "cosine")
    assert parse_match_spec("x", "normalized", True) == ("x", "normalized", True, "")
    for bad in ("x@", "x@fast", "x@cosine+verified"):
        with pytest.raises(ValueError):
            parse_match_spec(bad)
    with pytest.raises(ValueError, match="score must be"):
        match(tmp_path / "ex", dataset, ["tiny-image"], score="best", progress=False)
