"""End to end: framesim's default pipeline against the seed notebooks' one, on a copy-detection benchmark.

    python -m bench endtoend                  # 3 interleaved rounds, 156 examples, seed 0
    python -m bench endtoend --quick          # 1 round, 60 examples: a smoke run
    python -m bench endtoend --seeds 0,1,2,3  # accuracy on 4 benchmarks (timing on the first)

Setup (not timed): ``framesim extract`` of the shared videos at ``--fps`` into a dataset, then
``framesim.evaluation.benchmark.build_benchmark`` with the shared photos as distractors. Both pipelines
get the dataset's videos minus the benchmark's ``exclude_videos`` (near-duplicates it leaves out).

Timed, each in subprocesses and with cold caches (a fresh output folder per round: no embedding or
local-feature caches), interleaved over ``--repeat`` rounds with the order alternating:

* framesim: ``framesim extract VIDEOS -o DS --fps F -q``, then ``framesim match EXAMPLES -d DS -o RUN -q
  --no-report`` (the HTML report is not written, so not timed). The converted model under
  ``$FRAMESIM_HOME`` is a one-time cost per machine, like downloading weights: one untimed warm-up match
  makes sure it exists.
* seed: ``python -m bench.seed_pipeline`` (OpenCV decode, JPEG frames, Keras EfficientNet-Lite0 with
  ``model.predict``, average pooling, numpy cosine top-10; see that module).

Accuracy of both pipelines' pairs against the ground truth by ``framesim.evaluation.metrics``: µAP
(DISC21) and recall at 90 % precision. Wall seconds are medians over the rounds; the speed-up is the
median of the per-round ratios; CPU seconds (the children's user + system) are steadier on a shared box.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
QUICK_EXAMPLES = 60
GROW_EXAMPLES = 10
WARMUP_EXAMPLES = 2


@dataclass
class Run:
    """One timed run of one pipeline."""

    extract_s: float  # framesim extract / the seed's decode + write stage
    total_s: float
    cpu_s: float
    stages: dict[str, float]
    pairs: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    #: framesim only: the same match again (every cache warm), and again with GROW_EXAMPLES new examples
    rerun_s: float = float("nan")
    grow_s: float = float("nan")
    n_examples: int = 0

    @property
    def match_s(self) -> float:
        return self.total_s - self.extract_s


@dataclass
class Setup:
    """One benchmark (per seed) and the videos both pipelines get."""

    seed: int
    bench: Any  # framesim.evaluation.benchmark.Benchmark
    videos: list[str]
    left_out: list[str]


def _framesim_cmd() -> list[str]:
    # the console script next to this interpreter, else the same program as a module
    script = Path(sys.executable).parent / "framesim"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "framesim"]


def _run(cmd: list[str], log: Path) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the child, exit status); its output goes to ``log``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # children run one at a time: the delta is this one
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), rc


def _check(rc: int, log: Path, what: str, out: Path | None = None) -> None:
    # framesim exits 1 when some inputs failed but the rest was written: usable, with a note
    if rc == 0 or (rc == 1 and out is not None and out.is_file()):
        return
    tail = log.read_text(errors="replace").strip().splitlines()[-15:]
    raise click.ClickException(f"{what} failed (exit {rc}); log {log}:\n" + "\n".join(tail))


def run_framesim(videos: list[str], examples: Path, fps: float, work: Path) -> Run:
    ds, run_dir = work / "ds", work / "run"
    # The user's own examples folder, to which new examples are added at the end (copied: not timed)
    examples = Path(shutil.copytree(examples, work / "examples"))
    ext_wall, ext_cpu, rc = _run([*_framesim_cmd(), "extract", *videos, "-o", str(ds), "--fps", f"{fps:g}", "-q"],
                                 work / "extract.log")
    _check(rc, work / "extract.log", "framesim extract", ds / "manifest.csv")
    m_wall, m_cpu, rc = _run([*_framesim_cmd(), "match", str(examples), "-d", str(ds), "-o", str(run_dir), "-q",
                              "--no-report"], work / "match.log")
    _check(rc, work / "match.log", "framesim match", run_dir / "pairs.csv")
    run = json.loads((run_dir / "run.json").read_text())
    stages: dict[str, float] = {}
    notes = []
    if isinstance(run.get("timings"), dict):
        stages = {f"match.{k}": float(v) for k, v in run["timings"].items() if isinstance(v, int | float)}
    else:  # until run.json has "timings": the per-backbone figures it has had all along
        b = (run.get("backbones") or [{}])[0]
        verify = (b.get("postprocess") or {}).get("verify_seconds")
        for key, value in (("embed", b.get("embed_seconds")), ("search+verify", b.get("search_seconds")),
                           ("of which verify", verify)):
            if isinstance(value, int | float):
                stages[f"match.{key}"] = float(value)
        if {"match.embed", "match.search+verify"} <= set(stages) and isinstance(run.get("seconds"), int | float):
            # inside match() but neither: model load (ONNX session), dedupe, reading and writing tables
            stages["match.model load + other"] = (float(run["seconds"]) - stages["match.embed"]
                                                  - stages["match.search+verify"])
        notes.append('run.json has no "timings" yet: stages from backbones[0] (embed_seconds, search_seconds)')
    if isinstance(run.get("seconds"), int | float):
        # what the match subprocess spends outside match(): interpreter start, imports, writing
        stages["match.outside match()"] = m_wall - float(run["seconds"])
    if rc:
        notes.append("framesim match exited 1: some inputs failed")
    pairs = pd.read_csv(run_dir / "pairs.csv", keep_default_na=False)
    # Not part of the comparison: what a second identical match costs, and one with a few new examples
    # (copies of existing ones cut by a pixel: new pixels, so new embeddings, features and pairs).
    match_cmd = [*_framesim_cmd(), "match", "-d", str(ds), "-q", "--no-report"]
    rerun_s, _, rc = _run([*match_cmd, str(examples), "-o", str(work / "rerun")], work / "rerun.log")
    _check(rc, work / "rerun.log", "framesim match (again)", work / "rerun" / "pairs.csv")
    n_examples = len(list(examples.glob("*.jpg")))
    for path in sorted(examples.glob("*.jpg"))[:GROW_EXAMPLES]:  # into the same folder, as a user adds them
        img = cv2.imread(str(path))
        cv2.imwrite(str(examples / f"new_{path.name}"), img[1:, 1:], [cv2.IMWRITE_JPEG_QUALITY, 90])
    grow_s, _, rc = _run([*match_cmd, str(examples), "-o", str(work / "grown")], work / "grown.log")
    _check(rc, work / "grown.log", "framesim match (grown)", work / "grown" / "pairs.csv")
    return Run(extract_s=ext_wall, total_s=ext_wall + m_wall, cpu_s=ext_cpu + m_cpu, stages=stages,
               pairs=pairs, notes=notes, rerun_s=rerun_s, grow_s=grow_s,
               n_examples=n_examples)


def run_seed(videos: list[str], examples: Path, fps: float, work: Path) -> Run:
    out = work / "seed"
    wall, cpu, rc = _run([sys.executable, "-m", "bench.seed_pipeline", *videos, "--examples", str(examples),
                          "--fps", f"{fps:g}", "-o", str(out)], work / "seed.log")
    _check(rc, work / "seed.log", "bench.seed_pipeline")
    stages = {k: float(v) for k, v in json.loads((out / "timings.json").read_text())["timings"].items()}
    stages["process start + imports + write"] = wall - sum(stages.values())
    return Run(extract_s=stages["decode_write"], total_s=wall, cpu_s=cpu, stages=stages,
               pairs=pd.read_csv(out / "pairs.csv", keep_default_na=False))


def scores(run: Run, truth: pd.DataFrame) -> Any:
    from framesim.evaluation.metrics import score_examples

    pairs = run.pairs.assign(timestamp_s=pd.to_numeric(run.pairs["timestamp_s"], errors="coerce"),
                             score=pd.to_numeric(run.pairs["score"], errors="coerce"))
    return score_examples(pairs.drop(columns=["correct"], errors="ignore"), truth)


def build_setups(videos_dir: Path, fps: float, n_examples: int, distractors: Path, seeds: list[int],
                 work: Path) -> list[Setup]:
    from framesim.dataset import FrameDataset
    from framesim.evaluation.benchmark import build_benchmark

    ds = work / "setup-ds"
    _, _, rc = _run([*_framesim_cmd(), "extract", str(videos_dir), "-o", str(ds), "--fps", f"{fps:g}", "-q"],
                    work / "setup-extract.log")
    _check(rc, work / "setup-extract.log", "setup extract", ds / "manifest.csv")
    manifest = FrameDataset(ds).manifest()
    by_video = manifest.drop_duplicates("video")[["video", "video_id"]]
    setups = []
    for seed in seeds:
        bench = build_benchmark(ds, work / f"benchmark-{seed}", n_examples=n_examples, distractors=distractors,
                                seed=seed, progress=False)
        excluded = set(bench.exclude_videos)
        setups.append(Setup(seed, bench, [str(v) for v, i in by_video.itertuples(index=False) if i not in excluded],
                            [Path(str(v)).name for v, i in by_video.itertuples(index=False) if i in excluded]))
    # The converted model (and the weights cache) under $FRAMESIM_HOME: made once per machine, not timed.
    warm = work / "warmup"
    shutil.rmtree(warm, ignore_errors=True)
    (warm / "examples").mkdir(parents=True)
    for p in sorted(setups[0].bench.examples_dir.iterdir())[:WARMUP_EXAMPLES]:
        shutil.copy(p, warm / "examples" / p.name)
    _, _, rc = _run([*_framesim_cmd(), "match", str(warm / "examples"), "-d", str(ds), "-o", str(warm / "run"),
                     "-q", "--no-report"], warm / "match.log")
    _check(rc, warm / "match.log", "warm-up match", warm / "run" / "pairs.csv")
    return setups


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _stage_medians(runs: list[Run]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for r in runs for k in r.stages))
    return {k: _median([r.stages[k] for r in runs if k in r.stages]) for k in keys}


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole > 0 else "—"


def report(setups: list[Setup], fps: float, rounds: dict[str, list[Run]], accuracy: dict[int, dict[str, Any]],
           repeat: int) -> None:
    first = setups[0]
    b = first.bench
    click.echo(f"benchmark (seed {first.seed}): {len(b.truth)} examples ({b.n_sourced} with a source, "
               f"{b.n_distractors} distractors from {b.info.get('distractor_source')}); {len(first.videos)} videos "
               f"at {fps:g} fps" + (f", left out as near-duplicates: {', '.join(first.left_out)}"
                                    if first.left_out else ""))
    click.echo("framesim: `framesim extract VIDEOS -q`, then `framesim match -q --no-report` (report.html not "
               "written, not timed); fresh dataset folder per round, so no embedding/feature caches; the converted "
               "model under $FRAMESIM_HOME kept warm (one untimed warm-up match first)")
    click.echo("seed: `python -m bench.seed_pipeline` (OpenCV decode, JPEG q95 frames, Keras EfficientNet-Lite0 "
               "model.predict in batches of 32, average pooling, numpy cosine top-10)")
    click.echo(f"{repeat} round(s), interleaved, order alternating; medians of wall seconds; load average "
               f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    head = f"{'pipeline':10s} {'extract s':>9s} {'match s':>8s} {'total s':>8s} {'CPU s':>7s} {'µAP':>6s} " \
           f"{'recall@P90':>10s} {'examples':>12s}"
    click.echo(head)
    for name, runs in rounds.items():
        s = accuracy[first.seed][name]
        click.echo(f"{name:10s} {_median([r.extract_s for r in runs]):9.1f} {_median([r.match_s for r in runs]):8.1f} "
                   f"{_median([r.total_s for r in runs]):8.1f} {_median([r.cpu_s for r in runs]):7.1f} "
                   f"{s.micro_ap:6.3f} {s.recall_at_p90:10.3f} {f'{s.n_examples}+{s.n_distractors} distr.':>12s}")
    click.echo("  (seed: extract = its decode + write stage, match = the rest of its one process)")
    for name, runs in rounds.items():
        stages = _stage_medians(runs)
        click.echo(f"  {name} stages, median s: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
        for note in dict.fromkeys(n for r in runs for n in r.notes):
            click.echo(f"    note: {note}")
    fs, sd = rounds["framesim"], rounds["seed"]
    ratios = [s.total_s / f.total_s for f, s in zip(fs, sd, strict=True)]
    cpu_ratio = _median([s.cpu_s / f.cpu_s for f, s in zip(fs, sd, strict=True)])
    click.echo(f"\nspeed-up (seed total / framesim total): {_median(ratios):.2f}x  (per round: "
               f"{', '.join(f'{r:.2f}' for r in ratios)}; CPU seconds: {cpu_ratio:.2f}x)")
    f_ext, f_tot = _median([r.extract_s for r in fs]), _median([r.total_s for r in fs])
    s_ext, s_tot = _median([r.extract_s for r in sd]), _median([r.total_s for r in sd])
    click.echo(f"video decoding + frame writing, which both do: framesim extract {f_ext:.1f} s = {_pct(f_ext, f_tot)} "
               f"of its total (process start included); seed decode + write {s_ext:.1f} s = {_pct(s_ext, s_tot)}")
    f_st = _stage_medians(fs)
    if "match.of which verify" in f_st or "match.verify" in f_st:
        v = f_st.get("match.verify", f_st.get("match.of which verify", 0.0))
        f_match = _median([r.match_s for r in fs])
        click.echo(f"framesim's local-feature verification (the seed has none): {v:.1f} s = {_pct(v, f_match)} "
                   f"of its match, {_pct(v, f_tot)} of its total")
    first_match = _median([r.match_s for r in fs])
    rerun, grow = _median([r.rerun_s for r in fs]), _median([r.grow_s for r in fs])
    n = fs[0].n_examples
    click.echo(f"framesim match again, every cache warm: {rerun:.1f} s = {first_match / rerun:.1f}x faster than the "
               f"first ({first_match:.1f} s)")
    share = first_match * GROW_EXAMPLES / (n + GROW_EXAMPLES)
    click.echo(f"framesim match with {GROW_EXAMPLES} new examples added: {grow:.1f} s, {grow - rerun:.1f} s more "
               f"than the warm rerun; their share of the first match: {share:.1f} s")
    if len(accuracy) > 1:
        click.echo(f"\naccuracy per benchmark seed (timing rounds on seed {first.seed} only; other seeds: one "
                   "untimed run of each pipeline)")
        click.echo(f"{'seed':>4s}  {'framesim µAP':>12s} {'recall@P90':>10s}  {'seed µAP':>8s} {'recall@P90':>10s}")
        for seed, acc in accuracy.items():
            f, s = acc["framesim"], acc["seed"]
            click.echo(f"{seed:4d}  {f.micro_ap:12.3f} {f.recall_at_p90:10.3f}  {s.micro_ap:8.3f} "
                       f"{s.recall_at_p90:10.3f}")
        mean = {(n, m): statistics.fmean(getattr(a[n], m) for a in accuracy.values())
                for n in ("framesim", "seed") for m in ("micro_ap", "recall_at_p90")}
        click.echo(f"{'mean':>4s}  {mean['framesim', 'micro_ap']:12.3f} {mean['framesim', 'recall_at_p90']:10.3f}  "
                   f"{mean['seed', 'micro_ap']:8.3f} {mean['seed', 'recall_at_p90']:10.3f}")


@click.command()
@click.option("--videos", "videos_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=MEDIA / "videos", show_default="../shared/media/videos", help="Videos folder.")
@click.option("--distractors", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=MEDIA / "images", show_default="../shared/media/images", help="Distractor images folder.")
@click.option("--fps", default=2.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("-n", "--n-examples", type=click.IntRange(min=2), default=None, help="[default: 156; --quick: 60]")
@click.option("--seeds", default="0", show_default=True, help="Benchmark seeds, comma-separated (timing on the first).")
@click.option("--repeat", type=click.IntRange(min=1), default=None, help="Timed rounds [default: 3; --quick: 1].")
@click.option("--quick", is_flag=True, help="1 round, 60 examples: a smoke run.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), help="Keep the work folder here.")
def endtoend(videos_dir: Path, distractors: Path, fps: float, n_examples: int | None, seeds: str,
             repeat: int | None, quick: bool, keep: Path | None) -> None:
    """framesim's default pipeline vs the seed notebooks' one: time ratio and both accuracies, in one run."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"not integers: {seeds!r}", param_hint="--seeds") from exc
    if not seed_list:
        raise click.BadParameter("give at least one seed", param_hint="--seeds")
    n = n_examples or (QUICK_EXAMPLES if quick else 156)
    repeat = repeat or (1 if quick else 3)
    work = Path(tempfile.mkdtemp(prefix="framesim-endtoend-")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    done = False
    try:
        setups = build_setups(videos_dir, fps, n, distractors, list(dict.fromkeys(seed_list)), work)
        pipelines = {"framesim": run_framesim, "seed": run_seed}
        rounds: dict[str, list[Run]] = {name: [] for name in pipelines}
        first = setups[0]
        for r in range(repeat):
            # alternate who goes first: load from other work and warm file caches then hit both alike
            for name in list(pipelines)[:: 1 if r % 2 == 0 else -1]:
                folder = work / f"round{r}-{name}"
                shutil.rmtree(folder, ignore_errors=True)  # cold caches: a fresh folder every time
                folder.mkdir()
                rounds[name].append(pipelines[name](first.videos, first.bench.examples_dir, fps, folder))
                click.echo(f"round {r + 1}/{repeat} {name}: {rounds[name][-1].total_s:.1f} s", err=True)
        accuracy: dict[int, dict[str, Any]] = {first.seed: {}}
        for name, runs in rounds.items():
            per_round = [scores(run, first.bench.truth) for run in runs]
            accuracy[first.seed][name] = per_round[0]
            if len({(s.micro_ap, s.recall_at_p90) for s in per_round}) > 1:
                click.echo(f"note: {name}'s accuracy differs between rounds: "
                           + ", ".join(f"{s.micro_ap:.4f}" for s in per_round))
        for setup in setups[1:]:
            accuracy[setup.seed] = {}
            for name, fn in pipelines.items():
                folder = work / f"seed{setup.seed}-{name}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                accuracy[setup.seed][name] = scores(fn(setup.videos, setup.bench.examples_dir, fps, folder),
                                                    setup.bench.truth)
                click.echo(f"benchmark seed {setup.seed} {name}: done", err=True)
        report(setups, fps, rounds, accuracy, repeat)
        done = True
    finally:
        if keep is None and done:
            shutil.rmtree(work, ignore_errors=True)
        elif not done:  # the error names logs in it
            click.echo(f"work folder kept: {work}", err=True)
