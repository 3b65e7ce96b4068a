"""Deriving a score threshold from one run's scores, without ground truth.

Method (stated in the report in one sentence, see ``METHOD``): Otsu's two-class split of all of a
backbone's scores in the run, computed exactly on the sorted scores (no histogram bins). Top-1
scores of examples that really occur in the videos form a high mode; lower ranks and examples
without a true match form a low mode; Otsu picks the cut that maximises the variance between the
two groups. Its effectiveness ``eta`` (between-class variance / total variance, 0..1) says how
well two groups explain the scores: near 1 there is a clear gap, below about 0.5 there is none
and the threshold is only a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

METHOD = (
    "Threshold = Otsu's two-class split of each backbone's scores in this run (top-1 and lower ranks "
    "pooled): the score that maximises the variance between the 'above' and 'below' groups; "
    "η (0–1) is the share of score variance that split explains — near 1 means a clear gap between "
    "matches and non-matches, below 0.5 means no clear gap and the threshold is only a guess."
)

#: below this effectiveness the split is reported as weak
WEAK_ETA = 0.5


@dataclass(frozen=True)
class Threshold:
    """A derived threshold: ``value`` is None when the scores cannot be split (fewer than two
    distinct values). ``eta`` is Otsu's effectiveness in [0, 1]; ``n`` the number of scores."""

    value: float | None
    eta: float
    n: int
    n_above: int = 0

    @property
    def weak(self) -> bool:
        return self.value is None or self.eta < WEAK_ETA


def otsu_threshold(scores: Iterable[float] | np.ndarray) -> Threshold:
    """Otsu's threshold of a 1-D sample, exact (over every cut between sorted distinct values).

    Returns the midpoint between the highest score of the lower group and the lowest of the upper
    group, so ``score >= value`` selects the upper group. NaNs are ignored.
    """
    x = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64).ravel()
    x = np.sort(x[np.isfinite(x)])
    n = int(x.size)
    if n < 2 or x[0] == x[-1]:
        return Threshold(None, 0.0, n)
    csum = np.cumsum(x)
    total = csum[-1]
    w0 = np.arange(1, n, dtype=np.float64)  # size of the lower group for a cut after index i
    w1 = n - w0
    mu0 = csum[:-1] / w0
    mu1 = (total - csum[:-1]) / w1
    between = (w0 / n) * (w1 / n) * (mu0 - mu1) ** 2
    between[x[:-1] == x[1:]] = -1.0  # a cut must fall between two different values
    i = int(np.argmax(between))
    value = float((x[i] + x[i + 1]) / 2.0)
    var = float(np.var(x))
    eta = float(min(1.0, max(0.0, between[i] / var))) if var > 0 else 0.0
    return Threshold(value, eta, n, n_above=int(n - i - 1))


def backbone_thresholds(pairs: pd.DataFrame, backbones: Iterable[str] | None = None) -> dict[str, Threshold]:
    """Otsu threshold per backbone over that backbone's ``score`` column."""
    names = list(backbones) if backbones is not None else list(pd.unique(pairs["backbone"]))
    out: dict[str, Threshold] = {}
    for name in names:
        out[name] = otsu_threshold(pairs.loc[pairs["backbone"] == name, "score"].to_numpy(dtype=np.float64))
    return out
