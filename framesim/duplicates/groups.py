"""Groups of near-duplicate frames: connected components of the frame-pair graph.

Two frames are in one group when a chain of pairs with cosine >= ``min_score`` links them
(single-link clustering). Components are found with union-find (path halving, union by size;
Tarjan 1975), vectorised over the pair arrays rather than a Python loop per pair: each round hooks
every pair's larger root onto its smaller one, then compresses, until no pair spans two roots
(the "hook and compress" scheme of Shiloach & Vishkin 1982). No scipy needed.

Single link chains: at a low threshold A ~ B and B ~ C put A and C together however unlike they are,
and a slow pan or fade can link a whole shot, or via a common picture (a logo, a black frame) many
videos, into one group. Raise ``min_score`` when groups come out large.

Each group's *representative* (the frame to keep when keeping one of each) is the member with the
highest sum of its pair scores inside the group, ties to the lowest position: the most central frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from framesim.duplicates.files import GROUP_COLUMNS
from framesim.duplicates.selfjoin import FramePairs


def frame_groups(pairs: FramePairs, n: int, *, min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """(labels, representatives): ``labels`` (n,) int64 group per frame position, -1 for frames in no pair
    scoring >= ``min_score``; ``representatives[g]`` the position representing group g. Groups are numbered
    0.. by size, largest first, then by their lowest position."""
    i, j, score = np.asarray(pairs.i, np.int64), np.asarray(pairs.j, np.int64), np.asarray(pairs.score, np.float64)
    if not len(i) == len(j) == len(score):
        raise ValueError(f"pairs: i, j and score differ in length ({len(i)}, {len(j)}, {len(score)})")
    if n < 0 or (len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n)):
        raise ValueError(f"pairs: frame positions must lie in 0..{n - 1}")
    if np.isnan(score).any():
        raise ValueError("pairs: score contains NaN")
    keep = (score >= min_score) & (i != j)
    i, j, score = i[keep], j[keep], score[keep]
    root = _components(i, j, n)
    labels = np.full(n, -1, np.int64)
    members = np.unique(np.concatenate([i, j]))
    if not len(members):
        return labels, np.zeros(0, np.int64)
    roots, inverse, sizes = np.unique(root[members], return_inverse=True, return_counts=True)
    first = np.full(len(roots), n, np.int64)
    np.minimum.at(first, inverse, members)  # lowest position of each component
    rank = np.lexsort((first, -sizes))  # component numbers in output order
    number = np.empty(len(roots), np.int64)
    number[rank] = np.arange(len(roots))
    labels[members] = number[inverse]
    # representative: highest sum of in-group pair scores (every kept pair is inside one group)
    strength = np.bincount(i, score, n) + np.bincount(j, score, n)
    pick = np.lexsort((members, -strength[members], labels[members]))
    g = labels[members][pick]
    head = np.ones(len(g), bool)
    head[1:] = g[1:] != g[:-1]
    return labels, members[pick][head]


def _components(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Root (the lowest position) of every frame's component, after linking all pairs (i, j)."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        ri, rj = parent[i], parent[j]
        differ = ri != rj
        if not differ.any():
            return parent
        lo, hi = np.minimum(ri[differ], rj[differ]), np.maximum(ri[differ], rj[differ])
        np.minimum.at(parent, hi, lo)  # hook each larger root under the smallest root it meets
        while True:  # compress: every frame points straight at its root
            grand = parent[parent]
            if (grand == parent).all():
                break
            parent = grand


def groups_table(labels: np.ndarray, representatives: np.ndarray, frames: pd.DataFrame) -> pd.DataFrame:
    """One row per grouped frame: ``group, frame_id, video, timestamp_s, representative, size``, by group then
    position. ``frames``: the manifest rows in position order (columns frame_id, video, timestamp_s)."""
    labels = np.asarray(labels)
    if len(labels) != len(frames):
        raise ValueError(f"labels: {len(labels)} entries for {len(frames)} frames")
    missing = {"frame_id", "video", "timestamp_s"} - set(frames.columns)
    if missing:
        raise ValueError(f"frames: missing columns {sorted(missing)}")
    positions = np.flatnonzero(labels >= 0)
    group = labels[positions]
    positions = positions[np.argsort(group, kind="stable")]
    group = labels[positions]
    frame_id = frames["frame_id"].to_numpy()
    return pd.DataFrame({
        "group": group.astype(np.int64),
        "frame_id": frame_id[positions],
        "video": frames["video"].to_numpy()[positions],
        "timestamp_s": frames["timestamp_s"].to_numpy(dtype=np.float64)[positions],
        "representative": frame_id[np.asarray(representatives, np.int64)[group]] if len(group) else frame_id[:0],
        "size": np.bincount(group, minlength=len(representatives))[group].astype(np.int64),
    }, columns=GROUP_COLUMNS)
