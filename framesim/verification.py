"""Geometric verification of candidate pairs with local features (RootSIFT or ORB + RANSAC).

A global CNN descriptor says "looks alike"; it cannot tell the source frame from the same shot a
second later, and it fades when the copy is a small part of the example (picture-in-picture) or a
small part of the frame (strong crop). Local features matched under one geometric transform can:
the number of matches consistent with a single affine map (inliers) is high for a copy, whatever
its crop, scale, small rotation, overlay or re-encoding, and stays near zero for unrelated images.
This is the classic copy-detection verification (e.g. the local verification of the DISC21
winners, D2LV); here it re-scores each example's few best CNN candidates.

* Features (``VerifyParams.features``): ``rootsift`` (SIFT, Lowe 2004, as RootSIFT, Arandjelović &
  Zisserman 2012) or ``orb`` (Rublee et al. 2011, binary), on the greyscale image with the long side
  brought to ``min_long_side..long_side`` pixels; at most ``n_features`` per image.
* Matching: nearest neighbour with Lowe's ratio test, one example point per frame point. RootSIFT is
  matched with one matrix product (the descriptors are unit vectors), ORB by Hamming distance.
* Geometry: a full affine map by RANSAC with a 1 % (of the long side) reprojection threshold, refitted
  by least squares to its inliers and counted again (LO-RANSAC); maps that mirror, shrink or stretch
  implausibly (scale outside 1/8..8, anisotropy over 3) count 0. The mirrored example can be tried
  too (flipped copies; ``mirrored`` derives its RootSIFT without a second detection), keeping the
  larger count.

Deterministic: RANSAC's random generator is reseeded for every pair. How the features are cached and
which pairs get verified is ``framesim.verify_run``'s business.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

FEATURES = ("rootsift", "orb")
#: RANSAC's stopping rule: more samples than OpenCV's default (0.99), so the map it finds, and with it
#: the inlier count, depends less on its random draws
RANSAC_CONFIDENCE = 0.999
RANSAC_ITERATIONS = 5000
#: least-squares refits of the RANSAC map to its inliers, each followed by a recount
LOCAL_OPTIMISATION_STEPS = 2
#: most features per image: the feature cache stores counts and descriptors as float16, exact to 2048
MAX_FEATURES = 2048
_DESCRIPTOR_SIZE = {"rootsift": 128, "orb": 32}


@dataclass(frozen=True)
class VerifyParams:
    features: str = "rootsift"
    long_side: int = 640
    min_long_side: int = 320
    n_features: int = 1000
    ratio: float = 0.8
    ransac_threshold: float = 0.01  # of the image's long side
    max_scale: float = 8.0
    max_anisotropy: float = 3.0
    flip: bool = True

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if not 1 <= self.n_features <= MAX_FEATURES:
            raise ValueError(f"n_features must be 1..{MAX_FEATURES}, got {self.n_features!r}")

    @property
    def descriptor_size(self) -> int:
        return _DESCRIPTOR_SIZE[self.features]

    def extraction_tag(self) -> str:
        """Names the settings that change a stored image's features (not how pairs are matched)."""
        key = {k: getattr(self, k) for k in ("features", "long_side", "min_long_side", "n_features")}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.features}-{self.long_side}-{self.n_features}-{digest}"

    def tag(self) -> str:
        """Names every setting, the counting method's own included: two runs with the same tag give the
        same inliers for the same pair (so cached counts are reused only then)."""
        key = {**asdict(self), **_counting()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.features}-{digest}"


@dataclass
class LocalFeatures:
    """Keypoint positions (n, 2), divided by the image's long side, and descriptors (n, d): uint8 as the
    detector gives them (SIFT's are whole numbers 0..255), so they are stored without loss.
    ``mirror_axis``: x of the mirror image of a point is ``mirror_axis - x`` (see ``mirrored``)."""

    points: np.ndarray
    descriptors: np.ndarray
    mirror_axis: float = 1.0

    def __len__(self) -> int:
        return len(self.points)


_local = threading.local()  # detectors are not thread-safe to share; one per thread and setting


def _detector(params: VerifyParams) -> cv2.Feature2D:
    cache = _local.__dict__.setdefault("detectors", {})
    key = (params.features, params.n_features)
    if key not in cache:
        if params.features == "orb":
            # fastThreshold lowered: frames with soft, low-contrast content still yield keypoints
            cache[key] = cv2.ORB_create(nfeatures=params.n_features, fastThreshold=10)
        else:
            cache[key] = cv2.SIFT_create(nfeatures=params.n_features)
    return cache[key]


def _grey(rgb: np.ndarray, params: VerifyParams) -> np.ndarray:
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    long_side = max(grey.shape)
    if long_side > params.long_side:
        s = params.long_side / long_side
        grey = cv2.resize(grey, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    elif long_side < params.min_long_side:  # small images: upsample so the detector finds enough points
        s = params.min_long_side / long_side
        grey = cv2.resize(grey, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    return grey


def local_features(rgb: np.ndarray, params: VerifyParams = VerifyParams(), flip: bool = False) -> LocalFeatures:
    """Local features of an RGB uint8 image (of its mirror image with ``flip``)."""
    if flip and params.features == "rootsift":
        return mirrored(local_features(rgb, params))
    grey = _grey(rgb[:, ::-1] if flip else rgb, params)
    keypoints, desc = _detector(params).detectAndCompute(grey, None)
    long_side = max(grey.shape)
    # pixel centres sit at whole coordinates, so column x mirrors to width - 1 - x ... and SIFT's
    # positions come out half a pixel further: measured, its mirror-image keypoints lie at width - 0.5 - x
    axis = _f16((grey.shape[1] - 0.5) / long_side)
    if desc is None or not keypoints:
        return empty_features(params)
    points = _f16(np.array([k.pt for k in keypoints], np.float32) / long_side)
    return LocalFeatures(points, np.clip(np.rint(desc), 0, 255).astype(np.uint8), float(axis))


def _f16(x: np.ndarray | float) -> np.ndarray:
    # Positions at float16 precision (1/2048 of the long side at worst, a fraction of a pixel): what the
    # feature cache stores, so features give the same counts whether just computed or read back.
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


#: SIFT descriptor of the mirror image: its 4x4 grid of 8-bin orientation histograms, in the keypoint's
#: own frame, flipped top to bottom with each orientation bin k going to -k (the keypoint's angle a
#: becoming 180 - a). Checked against SIFT run on mirrored images: mean absolute difference 0.6 of 255.
_MIRROR_ORIENTATION = (8 - np.arange(8)) % 8


def mirrored(f: LocalFeatures) -> LocalFeatures:
    """RootSIFT features of the mirror image, from those of the image: no second detection."""
    points = f.points.copy()
    points[:, 0] = _f16(f.mirror_axis - points[:, 0])
    desc = f.descriptors.reshape(-1, 4, 4, 8)[:, ::-1][..., _MIRROR_ORIENTATION].reshape(len(f), 128)
    return LocalFeatures(points, np.ascontiguousarray(desc), f.mirror_axis)


def empty_features(params: VerifyParams) -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, params.descriptor_size), np.uint8))


def _rootsift(desc: np.ndarray) -> np.ndarray:
    # L1-normalise, square root: unit vectors that compare like the Hellinger kernel (better than L2 on SIFT)
    d = desc.astype(np.float32)
    return np.sqrt(d / (d.sum(axis=1, keepdims=True) + 1e-7))


def _matchable(f: LocalFeatures, params: VerifyParams) -> np.ndarray:
    """The descriptors as they are compared: RootSIFT unit vectors, or ORB's bits. Computed once per
    features object (an example is matched against many frames)."""
    cached = getattr(f, "_matchable", None)
    if cached is None:
        cached = _rootsift(f.descriptors) if params.features == "rootsift" else f.descriptors
        f._matchable = cached  # type: ignore[attr-defined]
    return cached


def _nearest_two(query: LocalFeatures, frames: Sequence[LocalFeatures], params: VerifyParams
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame, for each query point: its nearest frame point, and the distances to the nearest and
    second nearest. RootSIFT: one matrix product for all frames (one BLAS call instead of many small)."""
    q = _matchable(query, params)
    if params.features != "rootsift":
        out = []
        for f in frames:
            dist, idx = cv2.batchDistance(q, _matchable(f, params), -1, K=2, normType=cv2.NORM_HAMMING)
            out.append((idx[:, 0].astype(np.int64), dist[:, 0].astype(np.float32), dist[:, 1].astype(np.float32)))
        return out
    sims = q @ np.concatenate([_matchable(f, params) for f in frames]).T
    bounds = np.cumsum([0] + [len(f) for f in frames])
    rows = np.arange(len(q))
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        part = sims[:, lo:hi]
        best = part.argmax(axis=1)
        s1 = part[rows, best].copy()
        part[rows, best] = -np.inf  # (a view: the product is not needed again)
        s2 = part.max(axis=1)
        # unit vectors: |a - b|^2 = 2 - 2 a.b
        out.append((best, np.sqrt(np.maximum(2 - 2 * s1, 0)), np.sqrt(np.maximum(2 - 2 * s2, 0))))
    return out


def count_inliers(query: LocalFeatures, frame: LocalFeatures, params: VerifyParams = VerifyParams()) -> int:
    """Matches of ``query`` in ``frame`` consistent with one plausible affine map (0 if none)."""
    return count_inliers_many(query, [frame], params)[0]


def count_inliers_many(query: LocalFeatures, frames: Sequence[LocalFeatures],
                       params: VerifyParams = VerifyParams()) -> list[int]:
    """``count_inliers`` of ``query`` with each of ``frames`` (matched together: cheaper than one by one)."""
    usable = [i for i, f in enumerate(frames) if len(f) >= 3] if len(query) >= 3 else []
    counts = [0] * len(frames)
    if usable:
        for i, nearest in zip(usable, _nearest_two(query, [frames[i] for i in usable], params), strict=True):
            counts[i] = _affine_inliers(query, frames[i], *nearest, params)
    return counts


def _affine_inliers(query: LocalFeatures, frame: LocalFeatures, best: np.ndarray, d1: np.ndarray, d2: np.ndarray,
                    params: VerifyParams) -> int:
    good = np.flatnonzero(d1 < params.ratio * d2)
    if len(good) < 4:
        return 0
    # One query point per frame point (the closest): repeated blobs (stars, leaves) would otherwise
    # pile onto one frame point and let a degenerate map collect them all.
    order = good[np.lexsort((d1[good], best[good]))]
    keep = order[np.r_[True, best[order][1:] != best[order][:-1]]]
    if len(keep) < 4:
        return 0
    src, dst = query.points[keep], frame.points[best[keep]]
    cv2.setRNGSeed(0)  # RANSAC samples from OpenCV's (per-thread) generator: same answer every run
    model, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=params.ransac_threshold,
                                       maxIters=RANSAC_ITERATIONS, confidence=RANSAC_CONFIDENCE)
    if model is None or mask is None:
        return 0
    inliers = mask.ravel().astype(bool)
    # Local optimisation (LO-RANSAC, Chum et al. 2003): refit the map to all its inliers by least squares
    # and count again. The count then depends on the matches, not on which random sample won, so two
    # neighbouring frames are compared on their evidence rather than on RANSAC's luck.
    ones = np.ones((len(src), 1), np.float64)
    design = np.hstack([src.astype(np.float64), ones])
    for _ in range(LOCAL_OPTIMISATION_STEPS):
        if inliers.sum() < 3:
            break
        fit, *_ = np.linalg.lstsq(design[inliers], dst[inliers].astype(np.float64), rcond=None)
        refit = np.linalg.norm(design @ fit - dst, axis=1) <= params.ransac_threshold
        if refit.sum() < inliers.sum():
            break
        model, inliers = fit.T, refit
    linear = model[:, :2]
    sv = np.linalg.svd(linear, compute_uv=False)
    if (np.linalg.det(linear) <= 0 or sv.min() < 1 / params.max_scale or sv.max() > params.max_scale
            or sv.max() > params.max_anisotropy * sv.min()):
        return 0
    return int(inliers.sum())


def parse_verify_spec(spec: str) -> VerifyParams:
    """``FEATURES[:LONG_SIDE[:N_FEATURES]]`` (``rootsift``, ``orb:480``, ``rootsift:640:1000``) -> VerifyParams;
    what is left out keeps its default. ValueError saying what is wrong otherwise."""
    parts = spec.strip().lower().split(":")
    if not 1 <= len(parts) <= 3 or parts[0] not in FEATURES:
        raise ValueError(f"verification {spec!r}: give FEATURES[:LONG_SIDE[:N_FEATURES]] with FEATURES one of "
                         f"{', '.join(FEATURES)} (e.g. rootsift:640:1000)")
    try:
        numbers = [int(p) for p in parts[1:]]
    except ValueError:
        raise ValueError(f"verification {spec!r}: LONG_SIDE and N_FEATURES are whole numbers") from None
    if (numbers and not 32 <= numbers[0] <= 4096) or (len(numbers) > 1 and not 32 <= numbers[1] <= MAX_FEATURES):
        raise ValueError(f"verification {spec!r}: LONG_SIDE must be 32..4096 and N_FEATURES 32..{MAX_FEATURES}")
    fields: dict[str, object] = {"features": parts[0]}
    if numbers:
        fields["long_side"] = numbers[0]
        fields["min_long_side"] = min(VerifyParams.min_long_side, numbers[0])
    if len(numbers) > 1:
        fields["n_features"] = numbers[1]
    return VerifyParams(**fields)  # type: ignore[arg-type]


#: bump when counting changes in a way the constants above do not show: cached counts are then redone
COUNTING_VERSION = 2


def _counting() -> dict[str, object]:
    return {"counting_version": COUNTING_VERSION, "ransac_confidence": RANSAC_CONFIDENCE,
            "ransac_iterations": RANSAC_ITERATIONS, "local_optimisation_steps": LOCAL_OPTIMISATION_STEPS}


def describe(params: VerifyParams = VerifyParams()) -> dict[str, object]:
    method = {"rootsift": "RootSIFT", "orb": "ORB"}[params.features]
    return {"method": f"{method} + ratio test + affine RANSAC inliers, refitted to them (LO-RANSAC)",
            **asdict(params), **_counting()}
