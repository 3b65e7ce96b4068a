"""Verification over many pairs: feature and result caches, the mirror cascade, damaged caches, and match's
reuse of both (a second identical match verifies nothing; new examples pay only for themselves)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import textured_image

from framesim.verification import VerifyParams, count_inliers, local_features, parse_verify_spec
from framesim.verify_run import Cascade, FeatureStore, verify_pairs


@pytest.fixture
def images() -> dict[str, np.ndarray]:
    src = textured_image(1)
    crop = cv2.resize(src[40:320, 60:420], (240, 187), interpolation=cv2.INTER_AREA)
    return {"src": src, "other": textured_image(2), "crop": crop, "mirror": src[:, ::-1].copy()}


def _counting(images: dict[str, np.ndarray]) -> tuple[Callable[[str], np.ndarray], list[str]]:
    loaded: list[str] = []

    def load(key: str) -> np.ndarray:
        loaded.append(key)
        return images[key]

    return load, loaded


PAIRS = [("crop", "src"), ("crop", "other"), ("mirror", "src"), ("mirror", "other")]


def test_cached_features_and_results_give_the_same_counts_and_do_no_work_again(
        tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    load, loaded = _counting(images)
    first, stats = verify_pairs(PAIRS, load, load, cache_root=tmp_path)
    assert first[0] >= 20 and first[2] >= 20 and first[1] <= 6 and first[3] <= 6
    assert stats.pairs_verified == 4 and stats.pairs_cached == 0 and stats.features_computed >= 4
    # without a cache: the same counts (the cache's float16 records lose nothing that matters)
    assert verify_pairs(PAIRS, images.__getitem__, images.__getitem__)[0].tolist() == first.tolist()
    loaded.clear()
    again, stats = verify_pairs(PAIRS, load, load, cache_root=tmp_path)
    assert again.tolist() == first.tolist()
    assert stats.pairs_cached == 4 and stats.pairs_verified == 0 and loaded == []  # nothing decoded
    # a new pair of known images: features come from the store, only the pair is matched
    counts, stats = verify_pairs([("crop", "mirror"), *PAIRS], load, load, cache_root=tmp_path)
    assert counts[1:].tolist() == first.tolist()
    # (an image's features are stored once, whether it is an example or a frame)
    assert stats.pairs_verified == 1 and stats.features_computed == 0 and loaded == []


def test_the_mirror_is_matched_only_where_the_example_as_it_is_finds_nothing(
        tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    counts, stats = verify_pairs(PAIRS, images.__getitem__, images.__getitem__)
    assert stats.mirrored == 2  # the "mirror" example's two pairs: "crop" is conclusive with "src" as it is
    assert counts[2] >= 20  # the mirrored copy is found through the mirrored example
    always, _ = verify_pairs(PAIRS, images.__getitem__, images.__getitem__, cascade=Cascade(mirror_below=10**6))
    assert always.tolist() == counts.tolist()
    never, _ = verify_pairs(PAIRS, images.__getitem__, images.__getitem__, params=VerifyParams(flip=False))
    assert never[2] <= 6


def test_damaged_feature_shard_is_dropped_with_a_warning_and_recomputed(
        tmp_path: Path, images: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]) -> None:
    first, _ = verify_pairs(PAIRS, images.__getitem__, images.__getitem__, cache_root=tmp_path)
    store = FeatureStore(tmp_path, VerifyParams())
    vecs = sorted(store.cache.dir.glob("shard-*.vecs.npy"))
    assert vecs
    data = bytearray(vecs[0].read_bytes())
    data[-100] ^= 0xFF
    vecs[0].write_bytes(bytes(data))
    for results in (tmp_path / "_local").glob("_inliers-*"):  # forget the results too: features are needed
        for f in results.rglob("shard-*"):
            f.unlink()
    load, loaded = _counting(images)
    again, stats = verify_pairs(PAIRS, load, load, cache_root=tmp_path)
    assert "damaged embedding shard ignored and removed" in capsys.readouterr().err
    assert again.tolist() == first.tolist() and stats.features_computed > 0 and loaded


def test_features_round_trip_through_the_store(tmp_path: Path, images: dict[str, np.ndarray]) -> None:
    for params in (VerifyParams(), VerifyParams(features="orb", n_features=300)):
        store = FeatureStore(tmp_path, params)
        feats = local_features(images["src"], params)
        store.put(["k"], [feats])
        store.flush()
        back = FeatureStore(tmp_path, params).get(["k"])[0]
        assert np.array_equal(back.descriptors, feats.descriptors) and np.array_equal(back.points, feats.points)
        assert count_inliers(local_features(images["crop"], params), back, params) == count_inliers(
            local_features(images["crop"], params), feats, params)


@pytest.mark.parametrize(("spec", "expected"), [
    ("rootsift", VerifyParams()),
    ("orb:480", VerifyParams(features="orb", long_side=480)),
    ("RootSIFT:256:300", VerifyParams(long_side=256, min_long_side=256, n_features=300)),
])
def test_verify_spec(spec: str, expected: VerifyParams) -> None:
    assert parse_verify_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "surf", "orb:big", "orb:640:5000", "orb:8", "rootsift:640:100:1"])
def test_bad_verify_spec_says_what_is_wrong(spec: str) -> None:
    with pytest.raises(ValueError, match="verification"):
        parse_verify_spec(spec)


def test_mirrored_rootsift_is_sift_of_the_mirror_image(images: dict[str, np.ndarray]) -> None:
    from framesim.verification import mirrored

    src = images["src"]
    derived, detected = mirrored(local_features(src)), local_features(src[:, ::-1].copy())
    # the same keypoints (by position) with nearly the same descriptors as a second detection
    # (a point with several dominant orientations is several keypoints: compare with the closest of them)
    gap = np.abs(derived.points[:, None, :] - detected.points[None, :, :]).max(axis=2)
    desc_diff = np.abs(derived.descriptors[:, None, :].astype(int) - detected.descriptors[None].astype(int)).mean(2)
    closest = np.where(gap < 1e-3, desc_diff, np.inf).min(axis=1)
    same = np.isfinite(closest)
    assert same.mean() > 0.7
    assert np.median(closest[same]) < 2  # of 0..255; unrelated keypoints differ by about 25
    assert count_inliers(derived, detected) >= 0.5 * len(derived)
    assert np.array_equal(mirrored(mirrored(local_features(src))).descriptors, local_features(src).descriptors)
    blank = local_features(np.zeros((40, 60, 3), np.uint8))  # no keypoints at all
    assert len(blank) == 0 and len(mirrored(blank)) == 0


def test_match_reuses_verification_and_new_examples_pay_only_for_themselves(
        tmp_path: Path, make_video: Callable[..., Path]) -> None:
    from framesim.dataset import extract
    from framesim.matching import match

    video = make_video("scenes.mp4", n_frames=40, fps=10, size=(320, 240), scene_starts=(0, 10, 20, 30))
    dataset = tmp_path / "ds"
    assert extract([video], dataset, every=5, progress=False).ok
    cap, frames = cv2.VideoCapture(str(video)), []
    while (got := cap.read())[0]:
        frames.append(got[1])
    examples = tmp_path / "ex"
    examples.mkdir()
    for index in (3, 17, 24):
        cv2.imwrite(str(examples / f"from{index}.jpg"), cv2.resize(frames[index][20:220, 30:290], (195, 150)))

    def work(run: dict) -> dict:
        return run["backbones"][0]["postprocess"]["verification_work"]

    first = match(examples, dataset, ["tiny-image"], top_k=3, progress=False)
    assert work(first.run)["pairs_verified"] == work(first.run)["pairs"] > 0
    assert first.run["timings"]["verify"] > 0 and set(first.run["timings"]) >= {"embed", "search", "verify"}
    again = match(examples, dataset, ["tiny-image"], top_k=3, progress=False)
    assert work(again.run)["pairs_verified"] == 0 and work(again.run)["pairs_cached"] == work(first.run)["pairs"]
    assert again.pairs.equals(first.pairs)
    cv2.imwrite(str(examples / "from36.jpg"), cv2.resize(frames[36][20:220, 30:290], (195, 150)))
    grown = match(examples, dataset, ["tiny-image"], top_k=3, progress=False)
    new_pairs = work(grown.run)["pairs"] - work(first.run)["pairs"]
    assert work(grown.run)["pairs_verified"] == new_pairs > 0  # only the new example's candidates
    assert work(grown.run)["features_computed"] <= 1 + new_pairs  # its image, and frames never seen before
    old = grown.pairs[grown.pairs["example"] != "from36.jpg"].reset_index(drop=True)
    assert old.equals(first.pairs)


def test_cached_counts_are_keyed_by_the_counting_method_too(monkeypatch: pytest.MonkeyPatch) -> None:
    import framesim.verification as verification

    before = VerifyParams().tag()
    assert VerifyParams(ratio=0.7).tag() != before and VerifyParams().extraction_tag() == VerifyParams(
        ratio=0.7).extraction_tag()  # matching settings do not change an image's features
    monkeypatch.setattr(verification, "RANSAC_CONFIDENCE", 0.99)
    assert VerifyParams().tag() != before
