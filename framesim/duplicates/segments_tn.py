"""Temporal-network alignment of frame matches (the ``"tn"`` method of ``find_segments``), and the layout
of oriented matches that both alignment methods share.

A *node* is one candidate frame pair (a, b) between video A and video B, at times (t_a, t_b) on each
video's own clock, weighted by its similarity above a bias. An edge joins (a1, b1) -> (a2, b2) when both
clocks move forward (0 < t_a2 - t_a1 <= max_gap, 0 < t_b2 - t_b1 <= max_gap) and the offset t_b - t_a
changes by at most ``tol + speed_tol * (t_a2 - t_a1)``. The graph is a DAG (both times increase), so
the path of largest summed weight ending at each node is one pass of dynamic programming in time
order. Copies are then taken greedily, best path first, and their nodes removed, as in Tan, Ngo, Hung
and Wu, "Scalable detection of partial near-duplicate videos by visual-temporal consistency" (ACM MM
2009), the temporal network that VCSL (He et al., CVPR 2022) found among the best copy localisers.

Why this shape works: a copied stretch gives a chain of matches at a near-constant offset, while
spurious matches (similar-looking but unrelated frames) scatter at random offsets and rarely chain.
The tolerance is in seconds, scaled by the coarser video's sampling step, so frames sampled at
different rates (2 fps against 1.5 fps, 25 against 29.97 fps sources) still chain; ``max_gap``
spans a few dropped samples; ``speed_tol`` lets the offset drift slowly (a copy played at 0.9-1.1x).

Complexity: edges are found by a sliding window over the time-sorted nodes of each video pair,
O(m * window); the DP runs level by level (one level = one distinct t_a), vectorised over all video
pairs at once; extraction walks each node once (a lazy heap re-queues paths cut by earlier ones).
Each extracted path has its weak ends trimmed and is then regrown along strong edges (see
``trimmed_run`` and ``_regrow``), so chance matches next to a copy never stretch its extents.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

#: times closer than this count as equal (timestamps are floats from decoders)
TIME_EPS_S = 1e-6


@dataclass
class MatchLayout:
    """Candidate pairs oriented (video a before video b; in one video, a is the earlier frame) and
    sorted by (video a, video b, t_a, t_b). ``starts[g]:starts[g+1]`` are the nodes of video pair g.

    ``gap``/``tol``/``step_a``/``step_b`` are per node (constant within a video pair), in seconds."""

    ia: np.ndarray
    ib: np.ndarray
    va: np.ndarray
    vb: np.ndarray
    ta: np.ndarray
    tb: np.ndarray
    score: np.ndarray
    weight: np.ndarray
    gap: np.ndarray
    tol: np.ndarray
    step_a: np.ndarray
    step_b: np.ndarray
    starts: np.ndarray

    @property
    def group(self) -> np.ndarray:
        """The video-pair number of each node."""
        return np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))


@dataclass(frozen=True)
class AlignParams:
    """What both methods need beyond the layout."""

    min_frames: int
    speed_tol: float
    trim_margin: float
    trim_mads: float


def trimmed_run(scores: np.ndarray, margin: float, mads: float) -> tuple[slice, float]:
    """The part of a time-ordered run left after dropping weak pairs at its two ends.

    An end pair is weak when its similarity is below the run's median by more than ``margin`` or
    ``mads`` median absolute deviations, whichever is larger. Why: with positive weights a path
    always grows, so a spurious match that happens to sit next to a copy, at a compatible offset,
    would stretch the copy's extent; it is nearly always much weaker than the copy's own pairs. Only
    the ends are trimmed: inside a run, a weak pair is a bridge over a hard frame, not an extension.
    Also returns that similarity floor (-inf for runs too short to judge)."""
    n = len(scores)
    if n < 3:
        return slice(0, n), -np.inf
    median = float(np.median(scores))
    spread = float(np.median(np.abs(scores - median)))
    floor = median - max(margin, mads * spread)
    lo, hi = 0, n
    while hi - lo > 1 and scores[lo] < floor:
        lo += 1
    while hi - lo > 1 and scores[hi - 1] < floor:
        hi -= 1
    return slice(lo, hi), floor


def box_members(layout: MatchLayout, g: int, a0: float, a1: float, b0: float, b1: float) -> np.ndarray:
    """Nodes of video pair g with t_a in [a0, a1) and t_b in [b0, b1): the matches a segment with those
    extents already explains (another segment built from them would duplicate it)."""
    lo, hi = int(layout.starts[g]), int(layout.starts[g + 1])
    ta = layout.ta[lo:hi]
    first = lo + int(np.searchsorted(ta, a0 - TIME_EPS_S, "left"))
    last = lo + int(np.searchsorted(ta, a1 - TIME_EPS_S, "left"))
    idx = np.arange(first, last)
    tb = layout.tb[idx]
    return idx[(tb >= b0 - TIME_EPS_S) & (tb < b1 - TIME_EPS_S)]


def segment_box(layout: MatchLayout, path: np.ndarray) -> tuple[float, float, float, float]:
    """(start_a, end_a, start_b, end_b) of a path before clipping: first time to last time + step."""
    ta, tb = layout.ta[path], layout.tb[path]
    k = int(path[0])
    return (float(ta.min()), float(ta.max() + layout.step_a[k]),
            float(tb.min()), float(tb.max() + layout.step_b[k]))


def _edges(layout: MatchLayout, group: np.ndarray, speed_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """All (pred, node) edges of the temporal network, by a window sliding back over sorted nodes."""
    ta, tb = layout.ta, layout.tb
    preds: list[np.ndarray] = []
    nodes: list[np.ndarray] = []
    active = np.arange(len(ta), dtype=np.int64)
    k = 1
    while active.size:
        p = active - k
        keep = p >= 0
        active, p = active[keep], p[keep]
        da = ta[active] - ta[p]
        # sorted by t_a within a pair: once the window passes max_gap it never comes back
        keep = (group[p] == group[active]) & (da <= layout.gap[active] + TIME_EPS_S)
        active, p, da = active[keep], p[keep], da[keep]
        db = tb[active] - tb[p]
        ok = ((da > TIME_EPS_S) & (db > TIME_EPS_S) & (db <= layout.gap[active] + TIME_EPS_S)
              & (np.abs(db - da) <= layout.tol[active] + speed_tol * da + TIME_EPS_S))
        preds.append(p[ok])
        nodes.append(active[ok])
        k += 1
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(preds), np.concatenate(nodes)


def _levels(layout: MatchLayout, group: np.ndarray) -> np.ndarray:
    """Rank of each node's t_a among the distinct t_a of its video pair (0 = earliest)."""
    m = len(layout.ta)
    new_pair = np.ones(m, bool)
    new_pair[1:] = group[1:] != group[:-1]
    new_time = new_pair.copy()
    new_time[1:] |= (layout.ta[1:] - layout.ta[:-1]) > TIME_EPS_S
    rank = np.cumsum(new_time) - 1
    return rank - rank[layout.starts[group]]


@dataclass
class Network:
    """The temporal network and its DP: per node the best summed weight of a path ending there
    (``best``), the node before it on that path (``pred``, -1 at a start), that path's length
    (``length``); the edges ``src -> dst`` sorted by ``src`` (``out[k]:out[k+1]`` leave node k) and
    the same edges sorted by ``dst`` (``back_src``, ``inn[k]:inn[k+1]`` enter node k)."""

    best: np.ndarray
    pred: np.ndarray
    length: np.ndarray
    dst: np.ndarray
    out: np.ndarray
    back_src: np.ndarray
    inn: np.ndarray

    def successors(self, k: int) -> np.ndarray:
        return self.dst[self.out[k]:self.out[k + 1]]

    def predecessors(self, k: int) -> np.ndarray:
        return self.back_src[self.inn[k]:self.inn[k + 1]]


def longest_paths(layout: MatchLayout, speed_tol: float) -> Network:
    """Build the network and run the DP, level by level (all video pairs at once)."""
    m = len(layout.ta)
    group = layout.group
    best = layout.weight.astype(np.float64).copy()
    pred = np.full(m, -1, np.int64)
    length = np.ones(m, np.int64)
    src, dst = _edges(layout, group, speed_tol)
    by_src = np.argsort(src, kind="stable")
    by_dst = np.argsort(dst, kind="stable")
    net = Network(best=best, pred=pred, length=length, dst=dst[by_src],
                  out=np.searchsorted(src[by_src], np.arange(m + 1)), back_src=src[by_dst],
                  inn=np.searchsorted(dst[by_dst], np.arange(m + 1)))
    if src.size == 0:
        return net
    level = _levels(layout, group)
    order = np.lexsort((dst, level[dst]))
    src, dst = src[order], dst[order]
    bounds = np.searchsorted(level[dst], np.arange(level[dst].max() + 2))
    for lv in range(1, len(bounds) - 1):
        lo, hi = bounds[lv], bounds[lv + 1]
        if lo == hi:
            continue
        s, d = src[lo:hi], dst[lo:hi]
        value = best[s]
        # per target node: the predecessor with the largest path weight (edges sorted by target)
        first = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        top = np.maximum.reduceat(value, first)
        count = np.diff(np.r_[first, len(d)])
        is_top = value >= np.repeat(top, count)
        # first edge of each target that reaches the maximum
        hit = np.flatnonzero(is_top)
        hit = hit[np.r_[True, d[hit[1:]] != d[hit[:-1]]]]
        targets, winner = d[hit], s[hit]
        gain = top > 0  # a path with negative weight so far is better not joined
        best[targets[gain]] += top[gain]
        pred[targets[gain]] = winner[gain]
        length[targets[gain]] = length[winner[gain]] + 1
    return net


def _regrow(net: Network, layout: MatchLayout, path: list[int], used: np.ndarray, floor: float) -> list[int]:
    """Extend a trimmed path at both ends, one strongest unused neighbour (similarity >= floor) at a
    time. Why: the DP's best path may leave a copy one pair early, when a detour through chance
    matches beyond its end adds more weight; trimming cuts the detour, this takes back the copy's
    own last pairs."""
    taken = set(path)
    for forward in (True, False):
        while True:
            k = path[-1] if forward else path[0]
            near = net.successors(k) if forward else net.predecessors(k)
            near = near[~used[near] & (layout.score[near] >= floor)]
            near = near[[n not in taken for n in near.tolist()]] if near.size else near
            if near.size == 0:
                break
            k = int(near[np.argmax(layout.score[near])])
            taken.add(k)
            if forward:
                path.append(k)
            else:
                path.insert(0, k)
    return path


def tn_paths(layout: MatchLayout, params: AlignParams) -> list[np.ndarray]:
    """Copied segments as time-ordered arrays of node indices, greedily by path weight.

    Each accepted path (after trimming its weak ends and regrowing strong ones) with at least
    ``min_frames`` nodes is kept; its nodes and every other node inside its extents are then used
    up, so the same stretch of the two videos never gives two segments, while the same source
    copied to two places of B still does."""
    net = longest_paths(layout, params.speed_tol)
    best, pred, length = net.best, net.pred, net.length
    m = len(best)
    used = np.zeros(m, bool)
    group = layout.group
    is_pred = np.zeros(m, bool)
    is_pred[pred[pred >= 0]] = True
    heap = [(-best[k], int(k)) for k in np.flatnonzero(~is_pred & (length >= params.min_frames))]
    heapq.heapify(heap)
    paths: list[np.ndarray] = []

    def use(nodes: np.ndarray) -> None:
        fresh = nodes[~used[nodes]]
        used[fresh] = True
        # a node whose path ran through a node now used becomes the end of a shorter path
        for p in pred[fresh]:
            if p >= 0 and not used[p] and length[p] >= params.min_frames:
                heapq.heappush(heap, (-best[p], int(p)))

    while heap:
        _, end = heapq.heappop(heap)
        if used[end]:
            continue
        chain = []
        node = end
        while node >= 0 and not used[node]:
            chain.append(node)
            node = pred[node]
        path = np.array(chain[::-1], np.int64)
        weight = float(layout.weight[path].sum())
        if node >= 0 and heap and weight < -heap[0][0] - 1e-12:
            heapq.heappush(heap, (-weight, end))  # cut short by an earlier path: wait its turn
            continue
        keep, floor = trimmed_run(layout.score[path], params.trim_margin, params.trim_mads)
        used[path] = True  # (briefly) so regrowing cannot pick the trimmed detour back up
        kept = path[keep]
        if len(kept) >= 2 and np.isfinite(floor):
            kept = np.array(_regrow(net, layout, kept.tolist(), used, floor), np.int64)
        used[path] = False
        if len(kept) >= params.min_frames:
            paths.append(kept)
            box = box_members(layout, int(group[end]), *segment_box(layout, kept))
            use(np.concatenate([path, kept, box]))
        else:
            use(path)
    return paths
