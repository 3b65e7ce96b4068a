"""Build a copy-detection benchmark with known answers from a frame dataset.

``build_benchmark(dataset, out)`` writes ``out/examples/*.jpg``, ``out/ground_truth.csv`` (columns
``example, video, timestamp_s, edit`` as ``framesim.matching.read_ground_truth`` reads them, then
``frame_id, origin, source_video, params``) and ``out/benchmark.json``, and returns the videos that
``match(exclude_videos=...)`` must leave out of the index.

How it chooses, deterministically from ``seed``:

* **Near-duplicate videos** (a re-encode, or a clip contained in another, of a video in the same
  dataset: at least half of the sampled frames of one have a 16x16 thumbnail cosine >= 0.9 in the
  other) would make a second right answer that the ground truth cannot name. One video per group (most
  frames, then most pixels, then the biggest file, then first in the manifest) stays; the others are
  excluded from the index and from sampling.
* **Distractors** (examples that come from no indexed video): from ``distractors`` (a folder of
  images) if given; otherwise from held-out videos: about a third of the videos (at least one, always
  leaving one indexed), excluded from the index. A dataset with a single video needs the folder (or a
  ``distractor_share`` of 0): synthetic images would make distractors that are trivially rejected, and
  frames of the indexed video are not distractors at all.
* **Source frames**: examples with a source are spread over the indexed videos in proportion to their
  frames (at least one per video when there are enough examples) and, within a video, stratified over
  time. Each example is taken from the *video*, re-decoded, at a random time within half a sampling
  interval (at most 0.5 s) of a sampled frame: a copy is made from the original at any instant, not at
  the instants the dataset happened to sample, and the dataset's frames are JPEGs whose exact pixels
  would flatter every method. The ground-truth time is that decoded frame's timestamp (the same
  repaired stream clock the dataset uses), so a sampled frame within 1 s always exists. When the video
  file is gone or changed (its content id differs from the manifest's), the dataset frame is used
  (``from_video=False`` does so for every example: no decoding, for long videos). Decoding is
  sequential (seeking is not frame-exact), up to the last time needed in each video.
* **Edits**: every edit gets the same number of examples (+-1), in a seeded random order, and so do
  the distractors, which are edited the same way so that edit artefacts cannot tell them apart.
  Picture-in-picture canvases are frames of held-out videos, images of the distractor folder, or else
  a synthetic colour field. Every example is saved as JPEG quality 90.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from framesim._io import write_json, write_table
from framesim.dataset import FrameDataset, video_fingerprint
from framesim.evaluation.edits import EditContext, get_edits
from framesim.images import ImageError, find_images, load_image, save_image
from framesim.video import VideoError, VideoReader

FORMAT = "framesim-benchmark"
VERSION = 1
EXAMPLE_JPEG_QUALITY = 90
#: examples are taken at most this far from a sampled frame (and at most half a sampling interval)
MAX_JITTER_S = 0.5
#: a re-decoded frame further than this from its sampled frame is not used (odd timestamps)
MAX_SOURCE_OFFSET_S = 0.9
HOLD_OUT_SHARE = 1 / 3
DUPLICATE_THUMB = 16
DUPLICATE_COSINE = 0.9
DUPLICATE_SHARE = 0.5
DUPLICATE_FRAMES = 24
_EXAMPLE_NAME = re.compile(r"^\d{4,}_[a-z0-9_]+\.jpg$")


class NoDistractorSourceError(ValueError):
    """Distractors were asked for, but there is no folder and no video that could be held out."""


@dataclasses.dataclass
class Benchmark:
    """A built benchmark: where its files are, its ground truth and what to leave out of the index."""

    root: Path
    examples_dir: Path
    ground_truth_path: Path
    truth: pd.DataFrame
    #: video_ids to pass as ``match(exclude_videos=...)``: held-out videos and excluded duplicates
    exclude_videos: list[str]
    #: videos (as in the manifest) held out to give distractors
    held_out: list[str]
    #: duplicate video -> the video of the dataset it duplicates (the one kept)
    duplicates: dict[str, str]
    info: dict[str, Any]

    @property
    def n_sourced(self) -> int:
        return int((self.truth["video"] != "").sum())

    @property
    def n_distractors(self) -> int:
        return int((self.truth["video"] == "").sum())


@dataclasses.dataclass
class _Pick:
    """One planned example."""

    edit: str
    video_id: str = ""  # the video it is taken from ("" for a folder image)
    frame_row: int = -1  # manifest row of the sampled frame it is near
    target_s: float = 0.0
    folder_image: Path | None = None
    distractor: bool = False
    name: str = ""
    index: int = 0


# ------------------------------------------------------------------------------ planning


def dataset_videos(dataset: str | os.PathLike[str]) -> tuple[FrameDataset, pd.DataFrame, pd.DataFrame]:
    """The dataset, its manifest (rows 0..n-1) and ``_videos`` of it; ValueError if it has no frames."""
    ds = FrameDataset(dataset)
    with ds.lock():
        manifest = ds.manifest()
    if manifest.empty:
        raise ValueError(f"{ds.root}: the dataset has no frames; run `framesim extract` first")
    manifest = manifest.reset_index(drop=True)
    return ds, manifest, _videos(manifest)


def _videos(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per video_id in manifest order: video, n_frames, pixels."""
    g = manifest.groupby("video_id", sort=False)
    out = pd.DataFrame({"video": g["video"].first(), "n_frames": g.size(),
                        "pixels": g["width"].first() * g["height"].first()})
    out["order"] = np.arange(len(out))
    return out


def grey_thumbnail(rgb: np.ndarray) -> np.ndarray | None:
    """Zero-mean, unit-norm 16x16 grey thumbnail (cosine of two compares their structure), or None for a
    flat frame (black, or std below ~3 grey levels), which has no structure to compare."""
    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (DUPLICATE_THUMB, DUPLICATE_THUMB),
                      interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return None if norm < 3.0 * DUPLICATE_THUMB else grey / norm


def duplicate_videos(ds: FrameDataset, manifest: pd.DataFrame, *, frames_per_video: int = DUPLICATE_FRAMES,
                     min_cosine: float = DUPLICATE_COSINE, min_share: float = DUPLICATE_SHARE) -> dict[str, str]:
    """video_id -> video_id of the copy that is kept, for every video that nearly duplicates (or is
    contained in) another of the dataset. Compares zero-mean 16x16 grey thumbnails of up to
    ``frames_per_video`` frames per video; flat frames (no structure) are ignored."""
    import faiss

    videos = _videos(manifest)
    if len(videos) < 2:
        return {}
    thumbs, owner = [], []
    for vid, frames in manifest.groupby("video_id", sort=False):
        rows = frames.sort_values("timestamp_s")
        take = np.unique(np.linspace(0, len(rows) - 1, min(frames_per_video, len(rows))).round().astype(int))
        for rel in rows["path"].to_numpy()[take]:
            try:
                rgb = load_image(ds.frame_path(str(rel)))
            except (ImageError, ValueError):
                continue
            thumb = grey_thumbnail(rgb)
            if thumb is None:
                continue
            thumbs.append(thumb)
            owner.append(str(vid))
    if not thumbs:
        return {}
    x = np.ascontiguousarray(np.stack(thumbs), dtype=np.float32)
    owner_arr = np.array(owner, dtype=object)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, ids = index.range_search(x, float(min_cosine))
    per_video = pd.Series(owner_arr).value_counts()
    # hits[(a, b)] = frames of a with a frame of b above the threshold
    hits: dict[tuple[str, str], int] = {}
    for q in range(len(x)):
        others = set(owner_arr[ids[lims[q]:lims[q + 1]]]) - {owner_arr[q]}
        for b in others:
            hits[(owner_arr[q], b)] = hits.get((owner_arr[q], b), 0) + 1
    parent = {str(v): str(v) for v in videos.index}

    def find(v: str) -> str:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for (a, b), n in sorted(hits.items()):
        if n / per_video[a] >= min_share:
            parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for v in videos.index:
        groups.setdefault(find(str(v)), []).append(str(v))
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        keep = min(members, key=lambda v: (-videos.at[v, "n_frames"], -videos.at[v, "pixels"], -_file_size(ds, v),
                                           videos.at[v, "order"]))
        out.update({v: keep for v in members if v != keep})
    return out


def _file_size(ds: FrameDataset, video_id: str) -> int:
    # among equal copies the biggest file is the least compressed: keep that one as the original
    record = ds.video_state(video_id) or {}
    size = record.get("size")
    return int(size) if isinstance(size, int) else 0


def _allocate(weights: Sequence[int], n: int) -> list[int]:
    """``n`` split in proportion to ``weights`` (largest remainders), at least 1 each when n allows."""
    k = len(weights)
    if k == 0 or n <= 0:
        return [0] * k
    base = [1] * k if n >= k else [0] * k
    rest = n - sum(base)
    w = np.asarray(weights, np.float64)
    share = w / w.sum() * rest
    alloc = np.floor(share).astype(int)
    left = rest - int(alloc.sum())
    for i in np.argsort(-(share - alloc), kind="stable")[:left]:
        alloc[i] += 1
    return [int(b + a) for b, a in zip(base, alloc, strict=True)]


def _stratified(n_items: int, q: int, rng: np.random.Generator) -> list[int]:
    """``q`` positions in range(n_items), one drawn from each of q equal strata (repeats when q > n)."""
    edges = np.linspace(0, n_items, q + 1)
    out = []
    for k in range(q):
        lo = min(int(edges[k]), n_items - 1)
        hi = max(lo + 1, int(edges[k + 1]))  # <= n_items
        out.append(int(rng.integers(lo, hi)))
    return out


def _plan_from_videos(manifest: pd.DataFrame, video_ids: Sequence[str], n: int,
                      rng: np.random.Generator) -> list[tuple[str, int, float]]:
    """``n`` (video_id, manifest row, target time) spread over ``video_ids`` and over time."""
    frames = {v: manifest[manifest["video_id"] == v].sort_values("timestamp_s", kind="stable") for v in video_ids}
    quotas = _allocate([len(frames[v]) for v in video_ids], n)
    out = []
    for v, q in zip(video_ids, quotas, strict=True):
        rows = frames[v]
        ts = rows["timestamp_s"].to_numpy(np.float64)
        gaps = np.diff(ts)
        interval = float(np.median(gaps[gaps > 0])) if (gaps > 0).any() else 2 * MAX_JITTER_S
        jitter = min(MAX_JITTER_S, interval / 2)
        for pos in _stratified(len(rows), q, rng):
            t = float(ts[pos] + rng.uniform(-jitter, jitter))
            # within the sampled span: past the last sampled frame the video may have no frame at all
            out.append((str(v), int(rows.index[pos]), min(max(float(ts[0]), t), float(ts[-1]))))
    return out


def _balanced_edits(edits: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    reps = [edits[i % len(edits)] for i in range(n)]
    return [reps[i] for i in rng.permutation(n)]


def _choose_held_out(videos: pd.DataFrame, candidates: Sequence[str], rng: np.random.Generator) -> list[str]:
    """About a third of ``candidates`` (video_ids), at least one, never all."""
    k = min(len(candidates) - 1, max(1, round(len(candidates) * HOLD_OUT_SHARE)))
    ordered = sorted(candidates, key=lambda v: str(videos.at[v, "video"]))  # independent of manifest order
    return sorted((ordered[i] for i in rng.permutation(len(ordered))[:k]), key=lambda v: videos.at[v, "order"])


# ------------------------------------------------------------------------------ sources


def _decode_targets(video: Path, picks: Sequence[_Pick]) -> dict[int, tuple[np.ndarray, float]]:
    """pick.index -> (RGB, timestamp) of the first decoded frame at or after each pick's target time.
    Picks it could not serve (the video ends or breaks off first) are missing from the result."""
    order = sorted(picks, key=lambda p: p.target_s)
    got: dict[int, tuple[np.ndarray, float]] = {}
    try:
        with VideoReader(video) as reader:
            i = 0
            for _, t in reader:
                if i >= len(order):
                    break
                if t >= order[i].target_s - 1e-6:
                    rgb = reader.retrieve()
                    while i < len(order) and t >= order[i].target_s - 1e-6:
                        got[order[i].index] = (rgb, float(t))
                        i += 1
    except VideoError:
        pass  # what was decoded before is good; the rest falls back to the dataset's frames
    return got


def _background_source(paths: Sequence[Path]) -> Callable[[np.random.Generator], np.ndarray] | None:
    if not paths:
        return None
    paths = list(paths)
    cached = functools.lru_cache(maxsize=16)(load_image)  # per benchmark: freed with it

    def background(rng: np.random.Generator) -> np.ndarray:
        # tries a few in case one is unreadable; the draw stays deterministic
        for _ in range(4):
            try:
                return cached(str(paths[int(rng.integers(len(paths)))]))
            except ImageError:
                continue
        from framesim.evaluation.edits import synthetic_background

        return synthetic_background(rng, 320, 240)

    return background


def _clear_old_examples(folder: Path) -> None:
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and _EXAMPLE_NAME.match(p.name):
                p.unlink()


# ------------------------------------------------------------------------------ building


def build_benchmark(dataset: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, n_examples: int = 150,
                    distractor_share: float = 1 / 3, distractors: str | os.PathLike[str] | None = None,
                    seed: int = 0, edits: Sequence[str] | None = None, from_video: bool = True,
                    progress: bool = True) -> Benchmark:
    """Plan, cut and edit the examples of a benchmark from ``dataset`` into ``out_dir`` (see the
    module docstring). ``from_video=False`` takes every example from the dataset's own frame image
    at its own time instead of re-decoding the video (no decoding, so fast on long videos, but each
    example then shows exactly an indexed instant, which flatters every method). Raises ValueError
    when the dataset cannot give the benchmark asked for."""
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if int(n_examples) != n_examples or n_examples < 1:
        raise ValueError(f"n_examples must be a positive integer, got {n_examples!r}")
    if not 0 <= distractor_share < 1:
        raise ValueError(f"distractor_share must be in [0, 1), got {distractor_share!r}")
    seed, n_examples = int(seed), int(n_examples)
    edit_list = get_edits(edits)
    edit_names = [e.name for e in edit_list]
    ds, manifest, videos = dataset_videos(dataset)
    rng = np.random.default_rng([seed, 0])

    duplicates = duplicate_videos(ds, manifest)
    candidates = [str(v) for v in videos.index if str(v) not in duplicates]
    n_distractors = int(round(n_examples * distractor_share))
    n_sourced = n_examples - n_distractors
    if n_sourced < 1:
        raise ValueError(f"{n_examples} examples with a distractor share of {distractor_share:.2f} leave none "
                         "with a source; give more examples or a smaller share")
    folder_images: list[Path] = []
    held_out: list[str] = []
    if n_distractors:
        if distractors is not None:
            folder_images = find_images([distractors])
            if not folder_images:
                raise ValueError(f"{distractors}: no images found for distractors")
        elif len(candidates) < 2:
            raise NoDistractorSourceError(
                f"{ds.root}: the dataset has {'one video' if len(candidates) == 1 else 'no usable video'} (after "
                "leaving out near-duplicates), so no video can be held out to make distractors: give a folder of "
                "images that come from no video (--distractors DIR), or no distractors (--distractor-share 0)")
        else:
            held_out = _choose_held_out(videos, candidates, rng)
    indexed = [v for v in candidates if v not in held_out]

    # plan: (source, edit) per example; names come from a shuffled order so distractors are interleaved
    picks = [_Pick(edit=e, video_id=v, frame_row=r, target_s=t)
             for (v, r, t), e in zip(_plan_from_videos(manifest, indexed, n_sourced, rng),
                                     _balanced_edits(edit_names, n_sourced, rng), strict=True)]
    d_edits = _balanced_edits(edit_names, n_distractors, rng)
    if held_out:
        picks += [_Pick(edit=e, video_id=v, frame_row=r, target_s=t, distractor=True)
                  for (v, r, t), e in zip(_plan_from_videos(manifest, held_out, n_distractors, rng), d_edits,
                                          strict=True)]
    elif n_distractors:
        order = rng.permutation(len(folder_images))
        picks += [_Pick(edit=e, folder_image=folder_images[order[i % len(order)]], distractor=True)
                  for i, e in enumerate(d_edits)]
    width = max(4, len(str(len(picks) - 1)))
    for i, j in enumerate(rng.permutation(len(picks))):
        picks[j].index = i
        picks[j].name = f"{i:0{width}d}_{picks[j].edit}.jpg"
    picks.sort(key=lambda p: p.index)

    root = Path(out_dir)
    examples_dir = root / "examples"
    examples_dir.mkdir(parents=True, exist_ok=True)
    _clear_old_examples(examples_dir)
    if held_out:
        backgrounds = [ds.frame_path(str(p)) for p in manifest.loc[manifest["video_id"].isin(held_out), "path"]]
    else:
        backgrounds = folder_images
    ctx = EditContext(background=_background_source(backgrounds))
    rows: dict[int, dict[str, Any]] = {}

    def emit(p: _Pick, rgb: np.ndarray, t: float | None, origin: str) -> None:
        edited, params = get_edits([p.edit])[0](rgb, np.random.default_rng([seed, 1, p.index]), ctx)
        save_image(examples_dir / p.name, edited, jpeg_quality=EXAMPLE_JPEG_QUALITY)
        frame = manifest.loc[p.frame_row] if p.frame_row >= 0 else None
        source_video = str(frame["video"]) if frame is not None else ""
        rows[p.index] = {
            "example": p.name, "video": "" if p.distractor else source_video,
            "timestamp_s": "" if p.distractor or t is None else round(t, 6), "edit": p.edit,
            "frame_id": str(frame["frame_id"]) if frame is not None else "", "origin": origin,
            "source_video": source_video, "source_time_s": "" if t is None else round(t, 6),
            "params": json.dumps(params, sort_keys=True, separators=(",", ":")),
        }

    bar = tqdm(total=len(picks), unit="example", desc="benchmark", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    with bar:
        by_video: dict[str, list[_Pick]] = {}
        for p in picks:
            if p.folder_image is not None:
                try:
                    img = load_image(p.folder_image)
                except ImageError as exc:
                    raise ValueError(f"distractor image unreadable: {exc}") from exc
                emit(p, img, None, "folder:" + Path(os.path.relpath(p.folder_image, str(distractors))).as_posix())
                bar.update()
            else:
                by_video.setdefault(p.video_id, []).append(p)
        for vid, vpicks in by_video.items():
            path = Path(str(videos.at[vid, "video"]))
            decoded: dict[int, tuple[np.ndarray, float]] = {}
            try:
                if from_video and path.is_file() and video_fingerprint(path) == vid:
                    decoded = _decode_targets(path, vpicks)
            except OSError:
                decoded = {}
            for p in vpicks:
                anchor = manifest.loc[p.frame_row]
                got = decoded.get(p.index)
                if got is not None and abs(got[1] - float(anchor["timestamp_s"])) <= MAX_SOURCE_OFFSET_S:
                    emit(p, got[0], got[1], "video")
                else:  # video gone, changed or too short: the dataset's own frame at its own time
                    emit(p, load_image(ds.frame_path(str(anchor["path"]))), float(anchor["timestamp_s"]), "frame")
                bar.update()
            decoded.clear()

    truth = pd.DataFrame([rows[i] for i in sorted(rows)])
    gt_path = root / "ground_truth.csv"
    write_table(truth, csv=gt_path)
    # read back the way match() will, so callers see exactly what labels the pairs
    truth = pd.read_csv(gt_path, dtype={"example": str, "video": str, "edit": str, "frame_id": str,
                                         "origin": str, "source_video": str, "params": str}, keep_default_na=False)
    truth["timestamp_s"] = pd.to_numeric(truth["timestamp_s"], errors="coerce")
    vname = {str(v): str(videos.at[v, "video"]) for v in videos.index}
    info = {
        "format": FORMAT, "version": VERSION, "created": dt.datetime.now().isoformat(timespec="seconds"),
        "dataset": str(ds.root.resolve()), "seed": seed, "n_examples": len(truth), "n_with_source": n_sourced,
        "n_distractors": n_distractors, "distractor_share": distractor_share,
        "distractor_source": ("folder" if folder_images else "held-out videos" if held_out else "none"),
        "distractor_folder": str(Path(distractors).resolve()) if folder_images and distractors else None,
        "indexed_videos": [vname[v] for v in indexed], "held_out_videos": [vname[v] for v in held_out],
        "duplicate_videos": {vname[a]: vname[b] for a, b in duplicates.items()},
        "exclude_video_ids": sorted(set(held_out) | set(duplicates)),
        "edits": {e.name: e.description for e in edit_list},
        "examples_per_edit": {k: int(v) for k, v in truth[truth["video"] != ""]["edit"].value_counts().items()},
        "origins": {k: int(v) for k, v in truth["origin"].str.split(":").str[0].value_counts().items()},
        "jpeg_quality": EXAMPLE_JPEG_QUALITY, "max_jitter_s": MAX_JITTER_S if from_video else 0.0,
        "from_video": from_video,
    }
    write_json(root / "benchmark.json", info)
    return Benchmark(root=root, examples_dir=examples_dir, ground_truth_path=gt_path, truth=truth,
                     exclude_videos=list(info["exclude_video_ids"]), held_out=[vname[v] for v in held_out],
                     duplicates=info["duplicate_videos"], info=info)
