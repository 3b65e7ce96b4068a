"""Examples x frames -> scored pairs: embed both with each backbone, search, re-score, write the run.

The pieces live in their own modules: ``examples`` (finding and loading the example images),
``scoring`` (search and re-scoring: cosine, background-normalised, verified), ``runs`` (the run files,
written as one set) and ``ground_truth`` (labelling pairs). This module ties them together per
backbone. The result is one table for all backbones (``PAIRS_COLUMNS``, then ``cosine`` and, when
verified, ``inliers``), written with a ``run.json`` that describes the run, including ``postprocess``
(every parameter of the re-scoring); the report is built from these two files alone (plus the images).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim.backbones.base import Backbone, get_backbone, strip_score_suffix, weights_for
from framesim.collection import sync_collection
from framesim.dataset import FrameDataset
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD, dataset_runs
from framesim.distance import UnnormalisedVectors, check_metric
from framesim.embed_job import embed_frames
from framesim.embeddings import EmbeddingCache, EmbedStats, embed_missing
from framesim.engines import Engine, engine_session
from framesim.examples import Example, example_loader, examples_root, load_examples
from framesim.ground_truth import label_pairs, read_ground_truth, same_video, truth_summary
from framesim.index import auto_factory
from framesim.runs import (
    EXTRA_COLUMNS,
    PAIRS_COLUMNS,
    RUN_FILES,
    RUN_FORMAT,
    RUN_VERSION,
    RunFilesError,
    _write_run,
    default_run_dir,
    read_pairs,
    recover_run,
    write_run,
)
from framesim.scoring import (
    DEFAULT_CANDIDATES,
    DEFAULT_SCORE,
    SCORES,
    Scored,
    postprocess_settings,
    score_backbone,
    search_pairs,
)
from framesim.stores import StoreSpec, open_store
from framesim.verification import VerifyParams
from framesim.verify_run import Cascade

__all__ = [  # the names users' scripts and the tests import from here (older ones moved to their modules)
    "DEFAULT_BACKBONE", "DEFAULT_CANDIDATES", "DEFAULT_SCORE", "DEFAULT_TOP_K", "EXTRA_COLUMNS", "PAIRS_COLUMNS",
    "RUN_FILES", "SCORES", "Example", "MatchResult", "RunFilesError", "default_run_dir", "examples_root",
    "label_pairs", "load_examples", "match", "parse_match_spec", "read_ground_truth", "read_pairs", "recover_run",
    "same_video", "search_pairs", "write_run",
]

DEFAULT_BACKBONE = "efficientnet-lite0"
#: the stages of ``run.json["timings"]``: example images read and hashed, near-duplicate thumbnails, models
#: loaded, images embedded (decoding included), index + search + background, local-feature verification
STAGES = ("examples", "dedupe", "model", "embed", "search", "verify")
DEFAULT_TOP_K = 10
DEFAULT_WHITEN = False


@dataclass
class MatchResult:
    pairs: pd.DataFrame
    run: dict[str, Any]
    out_dir: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures




def match(
    examples: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dataset: str | os.PathLike[str],
    backbones: Sequence[str | Backbone] = (DEFAULT_BACKBONE,),
    *,
    top_k: int | None = DEFAULT_TOP_K,
    min_score: float | None = None,
    index: str | None = None,
    weights: Mapping[str, str | None] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    ground_truth: str | os.PathLike[str] | None = None,
    exclude_videos: Collection[str] = (),
    score: str = DEFAULT_SCORE,
    whiten: bool = DEFAULT_WHITEN,
    candidates: int = DEFAULT_CANDIDATES,
    workers: int = 2,
    runtime: str = "auto",
    dedupe: float = DEFAULT_DEDUPE_THRESHOLD,
    verify: VerifyParams | None = None,
    cascade: Cascade | None = None,
    store: str | StoreSpec | None = None,
    engine: str | Engine = "local",
    ray_address: str | None = None,
    metric: str = "cosine",
) -> MatchResult:
    """Rank every example against every frame of ``dataset`` with each backbone.

    ``backbones`` are specs ``NAME[:DESCRIPTOR]`` (``efficientnet-lite0``, ``efficientnet-lite0:avg``,
    ``resnet50:gem+flip``; see ``framesim.backbones``) or Backbone objects. ``weights`` maps a spec or
    a backbone name to its weights (``"imagenet"``, a file, or ``None`` for random).

    ``score`` says what the pairs' ``score`` is (module docstring): ``"verified"`` (default) and
    ``"normalized"`` are probabilities in [0, 1] computed over each example's ``max(top_k,
    candidates)`` best frames by cosine, so with ``top_k=None`` only those can be returned;
    ``"cosine"`` is the cosine similarity, searched over all frames. Higher is always more similar;
    the cosine stays available in the ``cosine`` column. ``whiten`` PCA-whitens the descriptors,
    learned on the frames being searched. A spec can override ``score`` and ``whiten`` for itself:
    ``efficientnet-lite0:avg@cosine`` is the original pipeline (see ``parse_match_spec``).
    ``dedupe``: consecutive frames of a video whose thumbnails differ by less than this (mean absolute
    difference, 0..1) share one CNN vector (``framesim.dedupe``); 0 embeds every frame.
    ``workers`` threads run the local-feature verification. ``runtime`` picks the inference runtime of
    the CNN backbones (``"auto"``, ``"tensorflow"``, ... see ``framesim.backbones.runtime``).

    With ``ground_truth`` (a CSV, see ``read_ground_truth``) the pairs get a ``correct`` column.
    Frames of ``exclude_videos`` (values of the manifest's ``video`` or ``video_id``) are left out of
    the index: evaluation holds videos out to make distractors that come from no indexed video.
    With ``out_dir`` the pairs (CSV + Parquet) and ``run.json`` are written there, atomically.

    ``store`` (a ``framesim.stores`` spec such as ``"qdrant"``): search the dataset's persistent
    collection instead of building an index for this run; what it lacks is indexed first
    (``collection.sync_collection``), so it ends up mirroring the frames searched.

    ``engine`` (``"local"``, ``"ray"`` at ``ray_address``: see ``framesim.engines``) embeds the frames
    the cache lacks; examples are embedded here.

    ``metric="l2"`` ranks by the Euclidean distance of the unnormalised descriptors in an L2 index
    (``framesim.distance``): the pairs get a ``distance`` column, ``score`` = 1 / (1 + distance), no
    re-scoring (``score``, ``whiten`` and ``store`` do not apply).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates!r}")
    if check_metric(metric) == "l2" and (store is not None or whiten or top_k is None):
        raise ValueError("--metric l2 ranks an index built for the run by distance: give --top-k above 0, "
                         "and no --store or --whiten")
    started = time.perf_counter()
    inputs = [examples] if isinstance(examples, str | os.PathLike) else list(examples)
    ds = FrameDataset(dataset)
    failures: list[str] = []

    def fail(msg: str) -> None:
        failures.append(msg)
        if on_error:
            on_error(msg)

    timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[name] += time.perf_counter() - t0

    with ds.lock(), engine_session(engine, address=ray_address) as runner:
        manifest = ds.manifest()
        if exclude_videos:
            held_out = manifest["video"].isin(exclude_videos)
            if "video_id" in manifest:
                held_out |= manifest["video_id"].isin(exclude_videos)
            manifest = manifest[~held_out].reset_index(drop=True)
        if manifest.empty:
            raise ValueError(f"{ds.root}: the dataset has no frames; run `framesim extract` first")
        with stage("examples"):
            example_list, root, failed_examples = load_examples(
                inputs, on_error=None, hash_cache=ds.root / "embeddings" / "example-hashes.json")
        for f in failed_examples:
            fail(f["reason"])
        frames_by_key = manifest.drop_duplicates("sha256")
        with stage("dedupe"):
            runs = dataset_runs(ds, manifest, frames_by_key, dedupe, workers)
        tables, backbone_runs = [], []
        with contextlib.ExitStack() as stores:  # the collections searched, closed once the run is done
            for spec in backbones:
                if isinstance(spec, Backbone):
                    backbone, b_score, b_whiten = spec, score, whiten
                else:
                    model_spec, b_score, b_whiten, suffix = parse_match_spec(spec, score, whiten)
                    with stage("model"):
                        backbone = get_backbone(model_spec, runtime=runtime, **weights_for(spec, weights))
                    if suffix:  # the pairs name the variant as asked: "efficientnet-lite0:avg@cosine"
                        backbone.name = f"{backbone.name}@{suffix}"
                with stage("embed"):
                    if metric == "l2":  # the descriptors as they are, cached apart from the normalised ones
                        backbone = UnnormalisedVectors(backbone)
                    cache = EmbeddingCache(ds.root / "embeddings", backbone)
                    if store is not None:
                        collection = stores.enter_context(open_store(store, dataset=ds.root, backbone=backbone))
                        synced = sync_collection(collection, ds, manifest, frames_by_key, runs, backbone, cache,
                                                 batch_size=batch_size, progress=progress, engine=runner)
                        frame_stats = synced.embed or EmbedStats()
                    else:
                        collection = None
                        frame_stats = embed_frames(backbone, cache, runs.representatives, ds, frames_by_key,
                                                   engine=runner, batch_size=batch_size, progress=progress)
                    example_stats = embed_missing(backbone, cache, [e.sha256 for e in example_list],
                                                  example_loader(example_list, backbone.input_size),
                                                  batch_size=batch_size, progress=progress, desc="examples")
                for msg in frame_stats.failures + example_stats.failures:
                    fail(msg)
                # Frames whose image could not be read are left out of the index, not fatal.
                has_vector = [runs.vector_key[k] in cache for k in manifest["sha256"]]
                usable = manifest[has_vector].reset_index(drop=True)
                usable_examples = [e for e in example_list if e.sha256 in cache]
                t0 = time.perf_counter()
                scored = score_backbone(cache, usable, usable_examples, ds, top_k=top_k, min_score=min_score,
                                        index=index, score=b_score, whiten=b_whiten, candidates=candidates,
                                        metric=metric,
                                        workers=workers, fail=fail, vector_key=runs.vector_key, verify=verify,
                                        cascade=cascade, progress=progress, store=collection)
                fitted = dict(scored.summary)
                if collection is not None:
                    fitted["store"] = collection.info()
                search_seconds = float(fitted.pop("search_seconds", 0.0))
                verify_seconds = float(fitted.get("verify_seconds", 0.0))
                timings["verify"] += verify_seconds
                timings["search"] += time.perf_counter() - t0 - verify_seconds
                tables.append(_pairs_table(backbone.name, usable_examples, usable, scored))
                backbone_runs.append({**_backbone_summary(backbone, frame_stats, example_stats, search_seconds),
                                      "postprocess": {**postprocess_settings(b_score, b_whiten, candidates, verify,
                                                                             cascade, metric), **fitted}})

    pairs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PAIRS_COLUMNS)
    truth_info = None
    if ground_truth is not None:
        truth = read_ground_truth(ground_truth)
        pairs = label_pairs(pairs, truth)
        truth_info = truth_summary(pairs, truth, ground_truth)
    run = {
        "format": RUN_FORMAT, "version": RUN_VERSION,
        "run": Path(out_dir).name if out_dir else None,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "dataset": str(ds.root.resolve()), "examples_root": str(root),
        "examples": [e.name for e in example_list], "failed_examples": failed_examples,
        "n_videos": int(manifest["video"].nunique()), "n_frames": len(manifest),
        "n_examples": len(example_list), "top_k": top_k, "min_score": min_score,
        "index": auto_factory(len(manifest)) if index in (None, "auto") else index, "metric": metric,
        # The run's defaults; each backbone's entry has its own (a spec's "@..." overrides them).
        "postprocess": postprocess_settings(score, whiten, candidates, verify, cascade, metric),
        "dedupe": runs.summary(),
        "seconds": round(time.perf_counter() - started, 3), "backbones": backbone_runs, "ground_truth": truth_info,
    }
    # Seconds per stage, summed over backbones; "other" is the rest (manifest, pairs table, ground truth).
    timings["other"] = max(0.0, run["seconds"] - sum(timings.values()))
    run["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result = MatchResult(pairs=pairs, run=run, failures=failures)
    if out_dir is not None:
        result.out_dir, result.run = _write_run(out_dir, pairs, run)
    return result


def parse_match_spec(spec: str, score: str = DEFAULT_SCORE, whiten: bool = DEFAULT_WHITEN
                     ) -> tuple[str, str, bool, str]:
    """Split ``NAME[:DESCRIPTOR][@SCORE[+whiten]]`` into (backbone spec, score, whiten, canonical suffix).

    The ``@`` part overrides ``match``'s ``score`` / ``whiten`` for this backbone, so one run can
    compare variants side by side: ``efficientnet-lite0`` against ``efficientnet-lite0:avg@cosine``
    (the original pipeline). Without it the run's settings apply and the suffix is "".
    """
    model_spec = strip_score_suffix(spec)
    if model_spec == spec:
        return spec, score, whiten, ""
    post = spec[len(model_spec) + 1:]
    parts = [p for p in post.lower().split("+") if p]
    scores = [p for p in parts if p in SCORES]
    unknown = [p for p in parts if p not in SCORES and p != "whiten"]
    if unknown or len(scores) > 1 or not parts:
        raise ValueError(f"{spec!r}: after '@' give one of {', '.join(SCORES)}, optionally +whiten "
                         f"(e.g. @cosine, @verified+whiten)")
    b_score = scores[0] if scores else score
    b_whiten = "whiten" in parts
    return model_spec, b_score, b_whiten, "+".join([b_score] + (["whiten"] if b_whiten else []))




def _pairs_table(backbone: str, examples: Sequence[Example], frames: pd.DataFrame, scored: Scored) -> pd.DataFrame:
    picked = frames.iloc[scored.fr_rows]
    table = pd.DataFrame({
        "backbone": backbone,
        "example": np.array([e.name for e in examples], dtype=object)[scored.ex_rows] if len(examples) else [],
        "frame_id": picked["frame_id"].to_numpy(),
        "video": picked["video"].to_numpy(),
        "frame_index": picked["frame_index"].to_numpy(np.int64),
        "timestamp_s": picked["timestamp_s"].to_numpy(np.float64),
        "score": np.asarray(scored.scores, np.float64).round(6),
        "cosine": np.asarray(scored.cosine, np.float64).round(6),
        "inliers": np.asarray(scored.inliers, np.int64),
    })
    extra = EXTRA_COLUMNS
    if scored.distance is not None:  # --metric l2: smaller = closer; score falls as it grows
        table["distance"] = np.asarray(scored.distance, np.float64).round(6)
        extra = [*EXTRA_COLUMNS, "distance"]
    # Ties keep the given order (stable); rank 1 = best frame for this example and backbone.
    table = table.sort_values(["example", "score"], ascending=[True, False], kind="stable")
    table["rank"] = table.groupby("example", sort=False).cumcount().astype(np.int64) + 1
    return table[PAIRS_COLUMNS + extra].reset_index(drop=True)


def _backbone_summary(backbone: Backbone, frames: EmbedStats, examples: EmbedStats,
                      search_seconds: float) -> dict[str, Any]:
    embedded = frames.embedded + examples.embedded
    seconds = frames.seconds + examples.seconds
    return {
        "name": backbone.name, "spec": backbone.spec, "dim": backbone.dim, "input_size": backbone.input_size,
        "weights": backbone.weights, "runtime": backbone.runtime,
        "frames_embedded": frames.embedded, "frames_cached": frames.cached,
        "examples_embedded": examples.embedded, "embed_seconds": round(seconds, 3),
        "images_per_s": round(embedded / seconds, 2) if embedded and seconds > 0 else None,
        "search_seconds": round(search_seconds, 4),
    }


