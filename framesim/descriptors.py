"""Post-processing of descriptors and scores at match time, learned from the dataset's own frames.

* ``PCAWhitening``: PCA whitening (Jégou & Chum, "Negative evidences and co-occurrences in image
  retrieval", ECCV 2012) fitted on the frames' descriptors, with shrinkage so that a few hundred
  frames suffice: ``x -> (C + s * mean_eig * I)^(-1/2) (x - mean)``, then L2-normalised.
* ``BackgroundSimilarity``: how similar an example is to frames that cannot be its source: the mean
  cosine of its ``k`` most similar **background** frames. The background is a sample of the dataset's
  frames minus the video of the example's best candidate: the true source and its whole video
  (static shots, repeats, the same instant a second later) never count as background, while every
  other video does. With a single video in the dataset, frames within ``window_s`` of the best
  candidate are left out instead.
* ``MatchPosterior``: the pair score that ``match`` reports by default: the probability that a
  frame is the example's source instant, among the example's candidates and a "none of them"
  alternative (SSCD-style score normalisation against the background, extended to competing
  candidates). Evidence of a candidate: ``cosine / temperature + inlier_weight * sqrt(inliers)``; of
  "none": ``background / temperature + inlier_weight * sqrt(null_inliers)``; score = softmax over both
  (the square root: inlier counts are counts, roughly Poisson, and their square roots have about
  constant spread, so 300 against 200 inliers is not taken as 100 independent votes). One threshold
  then means the same for every example, and frames that are only near the source (a second away
  in a static shot) share the probability instead of all scoring like the source. With a single
  candidate and no verification this is ``sigmoid((cosine - background) / temperature)``, a monotone
  function of SSCD's normalised score ``cosine - background``.

Each class is small: ``fit`` on frames, then apply; ``describe()`` gives the parameters for
``run.json`` so a run can be reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from framesim.backbones.base import l2_normalize

#: frames sampled (evenly, deterministically) to fit whitening and to serve as background
MAX_FIT_FRAMES = 20_000


def even_sample(n: int, limit: int) -> np.ndarray:
    """Row numbers of at most ``limit`` of ``n`` rows, evenly spread (deterministic)."""
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


@dataclass
class PCAWhitening:
    """PCA whitening with shrinkage, fitted on frame descriptors (see the module docstring).

    ``shrinkage`` adds ``shrinkage`` times the mean eigenvalue to every eigenvalue: 0 is plain PCA
    whitening (unstable with fewer frames than dimensions), larger values whiten less. All dimensions
    are kept; ``power`` 0.5 whitens fully, smaller values partly.
    """

    shrinkage: float = 1.0
    power: float = 0.5
    mean: np.ndarray | None = field(default=None, repr=False)
    projection: np.ndarray | None = field(default=None, repr=False)
    n_fit: int = 0

    def fit(self, vectors: np.ndarray) -> PCAWhitening:
        x = np.asarray(vectors, np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"whitening needs at least 2 vectors, got shape {x.shape}")
        self.mean = x.mean(axis=0)
        xc = x - self.mean
        cov = xc.T @ xc / len(x)
        eig, vec = np.linalg.eigh(cov)
        eig = np.maximum(eig, 0.0)
        # A tiny floor keeps shrinkage 0 finite on rank-deficient covariances (and identical frames).
        ridge = max(self.shrinkage * eig.mean(), 1e-9 * max(eig.max(), 1e-12))
        # Fix each eigenvector's sign so the projection is deterministic across LAPACK builds.
        vec = vec * np.where(vec[np.abs(vec).argmax(axis=0), np.arange(vec.shape[1])] < 0, -1.0, 1.0)
        self.projection = (vec * np.power(eig + ridge, -self.power)).astype(np.float32)
        self.mean = self.mean.astype(np.float32)
        self.n_fit = len(x)
        return self

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised float32 vectors (in the PCA basis: compare them with each other)."""
        if self.projection is None or self.mean is None:
            raise RuntimeError("PCAWhitening.apply before fit")
        return l2_normalize((np.asarray(vectors, np.float32) - self.mean) @ self.projection)

    __call__ = apply

    def describe(self) -> dict[str, Any]:
        return {"method": "pca-whitening", "shrinkage": self.shrinkage, "power": self.power, "fit_frames": self.n_fit}


@dataclass
class BackgroundSimilarity:
    """The background level of each example (see the module docstring)."""

    k: int = 3
    window_s: float = 5.0
    max_frames: int = MAX_FIT_FRAMES
    vectors: np.ndarray | None = field(default=None, repr=False)
    videos: np.ndarray | None = field(default=None, repr=False)
    times: np.ndarray | None = field(default=None, repr=False)

    def fit(self, vectors: np.ndarray, videos: np.ndarray, times: np.ndarray) -> BackgroundSimilarity:
        """Keep an even sample of the frames (vectors as searched: whitened if whitening is on)."""
        rows = even_sample(len(vectors), self.max_frames)
        self.vectors = np.asarray(vectors, np.float32)[rows]
        self.videos = np.asarray(videos, dtype=object)[rows]
        self.times = np.asarray(times, np.float64)[rows]
        return self

    @property
    def single_video(self) -> bool:
        return self.videos is not None and len(set(self.videos.tolist())) < 2

    def __call__(self, queries: np.ndarray, best_video: np.ndarray, best_time: np.ndarray) -> np.ndarray:
        """(n,) background cosine per query, given the video and time of its best candidate.

        NaN where no background frame is left (a dataset of a few frames from one video)."""
        if self.vectors is None or self.videos is None or self.times is None:
            raise RuntimeError("BackgroundSimilarity used before fit")
        out = np.full(len(queries), np.nan)
        if len(self.vectors) == 0:
            return out
        sims = np.asarray(queries, np.float32) @ self.vectors.T
        for q in range(len(queries)):
            keep = self.videos != best_video[q]
            if keep.sum() < self.k:  # one video only: leave out the best candidate's neighbourhood
                keep = np.abs(self.times - best_time[q]) > self.window_s
                keep &= self.videos == best_video[q]
                keep |= self.videos != best_video[q]
            s = sims[q][keep]
            if len(s):
                top = np.partition(s, len(s) - min(self.k, len(s)))[len(s) - min(self.k, len(s)):]
                out[q] = float(top.mean())
        return out

    def describe(self) -> dict[str, Any]:
        n = 0 if self.vectors is None else len(self.vectors)
        return {"method": "mean of the k most similar frames outside the best candidate's video", "k": self.k,
                "background_frames": n, "single_video_window_s": self.window_s}


@dataclass(frozen=True)
class MatchPosterior:
    """Scores as the probability that a candidate is the example's source (module docstring).

    ``temperature``: cosine difference per e-fold of evidence (0.05: a candidate 0.05 more similar is
    e times as likely). ``inlier_weight``: evidence per unit of sqrt(inliers) (the square root of a
    Poisson count has a standard deviation of about 1/2, so 2 makes one standard deviation about one
    e-fold). ``null_inliers``: inliers "none of them" is credited with, the count above which
    verification favours a match (unrelated images give up to about 5 with ``verification``'s strict
    RANSAC). Measured on the benchmarks: results change little for temperature 0.02..0.1, weight
    1.5..3 and null 5..12.
    """

    temperature: float = 0.05
    inlier_weight: float = 2.0
    null_inliers: float = 8.0

    def __call__(self, cosine: np.ndarray, background: np.ndarray, inliers: np.ndarray | None = None,
                 valid: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
        """(n, K) candidate cosines (+ inliers) and (n,) background -> (n, K) probabilities.

        ``valid`` masks padding (fewer than K candidates); a NaN background means "no evidence for
        none" beyond the verification term (cosine 0 is used: unrelated images score about that).
        ``groups`` (n, K): candidates of a row with the same value are one hypothesis (the same
        pixels stored in two videos): each gets the group's probability instead of a share of it."""
        cosine = np.asarray(cosine, np.float64)
        if valid is None:
            valid = np.ones(cosine.shape, bool)
        bg = np.nan_to_num(np.asarray(background, np.float64), nan=0.0)
        evidence = cosine / self.temperature
        null = bg / self.temperature
        if inliers is not None:
            evidence = evidence + self.inlier_weight * np.sqrt(np.maximum(np.asarray(inliers, np.float64), 0))
            null = null + self.inlier_weight * np.sqrt(self.null_inliers)
        evidence = np.where(valid, evidence, -np.inf)
        top = np.maximum(evidence.max(axis=1), null)[:, None]
        num = np.exp(evidence - top)
        counted = num
        if groups is not None:  # count each group once in the denominator (its best member)
            counted = num.copy()
            for q in range(len(num)):
                seen: dict[object, int] = {}
                for j in np.argsort(-num[q], kind="stable"):
                    if valid[q, j] and groups[q, j] in seen:
                        counted[q, j] = 0.0
                        num[q, j] = num[q, seen[groups[q, j]]]
                    else:
                        seen[groups[q, j]] = j
        den = counted.sum(axis=1, keepdims=True) + np.exp(null[:, None] - top)
        return np.where(valid, num / den, 0.0)

    def describe(self, verified: bool) -> dict[str, Any]:
        out = {"method": "posterior over the candidates and 'none' (softmax of evidence)", **asdict(self)}
        if not verified:
            out.pop("inlier_weight")
            out.pop("null_inliers")
        return out
