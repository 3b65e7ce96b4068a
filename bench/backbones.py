"""Backbone throughput per inference runtime: the network alone against end-to-end embed.

    python -m bench backbones -b efficientnet-lite0 -b resnet50 --random-weights

For each backbone and runtime (TensorFlow and the installed ones of ONNX Runtime and OpenVINO):

* forward: the network alone (one call of the runtime on a ready, preprocessed batch) at each of
  ``--batch-sizes``; the best batch size is reported, with its images/s, its ratio to TensorFlow's best,
  the CPU time per image, and the achieved GFLOP/s and share of the CPU's fp32 peak;
* end-to-end: ``embed_missing`` from 720p JPEG files into a fresh cache (decode, resize, preprocess,
  network, pooling, cache write) at ``--batch-size`` (the backbone splits batches into its
  ``network_batch``), and its ratio to the best forward.

FLOPs per image: 2 x the multiply-adds of the Keras model's Conv2D, DepthwiseConv2D and Dense layers at
the backbone's input size (batch norms, activations, additions and pooling left out). Peak: cores x clock
x 2 FMA units x fp32 SIMD lanes (8 for AVX2, 16 for AVX-512) x 2 FLOPs per FMA, from /proc/cpuinfo;
the assumptions are printed. Runtimes are measured in turns (each repeat runs every runtime) so that load
from other processes spreads over all of them; medians of ``--repeat`` runs.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from bench.common import _median_times

KERAS_APPS = ("vgg16", "resnet50", "resnet101")


@click.command()
@click.option("-b", "--backbone", "names", multiple=True, default=["efficientnet-lite0"], show_default=True)
@click.option("-r", "--runtime", "runtimes", multiple=True,
              type=click.Choice(["tensorflow", "onnxruntime", "openvino"]),
              help="Runtimes to measure [default: tensorflow and every installed one].")
@click.option("--batch-sizes", default="1,2,4,8,16,32", show_default=True, help="Forward batch sizes to try.")
@click.option("--batch-size", default=32, show_default=True, help="End-to-end batch size (match's default).")
@click.option("--forward-images", default=64, show_default=True, help="Images per forward run (rounded up to "
              "whole batches).")
@click.option("--images", default=96, show_default=True, help="Images per end-to-end run (0: skip end-to-end).")
@click.option("--repeat", default=3, show_default=True)
@click.option("--random-weights", is_flag=True, help="weights=None for Keras models (no download needed).")
@click.option("--clock-ghz", type=float, default=None, help="CPU clock for the peak [default: from /proc/cpuinfo].")
def backbones(names: tuple[str, ...], runtimes: tuple[str, ...], batch_sizes: str, batch_size: int,
              forward_images: int, images: int, repeat: int, random_weights: bool, clock_ghz: float | None) -> None:
    """Network images/s per runtime and batch size, against end-to-end embed."""
    from framesim.backbones import get_backbone
    from framesim.backbones.keras_base import KerasBackbone
    from framesim.backbones.runtime import AUTO_ORDER, cpu_threads, installed

    sizes = sorted({int(s) for s in batch_sizes.split(",")})
    runtimes = runtimes or ("tensorflow", *(r for r in AUTO_ORDER if installed(r)))
    cpu = cpu_peak(clock_ghz)
    print(f"CPU: {cpu.model}; {cpu.cores} cores x {cpu.clock_ghz:.3f} GHz ({cpu.clock_source}) x 2 FMA units x "
          f"{cpu.lanes} fp32 lanes ({cpu.simd}) x 2 = peak {cpu.peak_gflops:.0f} GFLOP/s (assumed 2 FMA units); "
          f"inference threads {cpu_threads()}; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as d:
        paths = _jpeg_frames(Path(d), images)
        rows = []
        for name in names:
            kwargs: dict[str, Any] = {"weights": None} if random_weights and name.split(":")[0] in KERAS_APPS else {}
            bb = get_backbone(name, runtime="tensorflow", **kwargs)
            if not isinstance(bb, KerasBackbone):
                raise click.UsageError(f"{name} has no network to run")
            flops = count_flops(bb.model, bb.input_size)
            used = []
            for runtime in runtimes:
                bb.set_runtime(runtime)
                if bb.runtime != runtime:
                    print(f"{name}: {runtime} unusable here (fell back to {bb.runtime}), skipped")
                    continue
                print(f"{name}: {runtime} ready in {bb.runtime_seconds:.1f} s; network batch {bb.network_batch}")
                used.append(runtime)
            results = {r: Result(name, r) for r in used}
            _measure_forward(bb, results, sizes, forward_images, repeat)
            if images:
                _measure_end_to_end(bb, results, paths, batch_size, repeat)
            for result in results.values():
                result.flops = flops
                print(f"  {name} {result.runtime}: batch size: img/s, CPU ms/img: "
                      + "; ".join(f"{b}: {ips:.1f}, {c * 1e3:.1f}" for b, (ips, c) in sorted(result.forward.items())))
            rows += results.values()
    _print_table(rows, cpu, batch_size)


@dataclass
class CpuPeak:
    model: str
    cores: int
    clock_ghz: float
    clock_source: str
    simd: str
    lanes: int

    @property
    def peak_gflops(self) -> float:
        return self.cores * self.clock_ghz * 2 * self.lanes * 2


def cpu_peak(clock_ghz: float | None = None) -> CpuPeak:
    """The fp32 peak of the CPUs this process may use, from /proc/cpuinfo (and lscpu's max clock if any)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    model_match = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)]
    source = "given"
    if clock_ghz is None:
        max_mhz = _lscpu_max_mhz()
        if max_mhz:
            clock_ghz, source = max_mhz / 1000, "lscpu max MHz"
        elif mhz:
            clock_ghz, source = statistics.mean(mhz) / 1000, "/proc/cpuinfo cpu MHz"
        else:
            clock_ghz, source = 2.0, "unknown, assumed"
    simd, lanes = ("AVX-512", 16) if "avx512f" in flags else ("AVX2+FMA", 8) if "fma" in flags else ("SSE", 4)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return CpuPeak(model_match.group(1).strip() if model_match else "unknown CPU", cores, clock_ghz, source,
                   simd, lanes)


def _lscpu_max_mhz() -> float | None:
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^CPU max MHz:\s*([\d.]+)", out, re.M)
    return float(m.group(1)) if m else None


def count_flops(model: Any, input_size: int) -> float:
    """2 x multiply-adds per image of the model's Conv2D, DepthwiseConv2D and Dense layers at
    ``input_size`` (a model taking any size is cloned at that size to get its shapes)."""
    import keras

    if model.inputs[0].shape[1] is None:
        model = keras.models.clone_model(model, input_tensors=keras.Input((input_size, input_size, 3)))
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # a Conv2D subclass in some versions: test first
            _, h, w, c = layer.output.shape
            macs += h * w * c * math.prod(layer.kernel_size)
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            macs += h * w * c * math.prod(layer.kernel_size) * layer.input.shape[-1] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            macs += math.prod(layer.output.shape[1:-1]) * layer.input.shape[-1] * layer.units
    return 2.0 * macs


@dataclass
class Result:
    backbone: str
    runtime: str
    #: batch size -> (images/s, CPU seconds per image), network only
    forward: dict[int, tuple[float, float]] = field(default_factory=dict)
    end_to_end: tuple[float, float] | None = None
    flops: float = 0.0

    @property
    def best_batch(self) -> int:
        return max(self.forward, key=lambda b: self.forward[b][0])

    @property
    def least_cpu(self) -> float:
        """CPU seconds per image at the thriftiest batch size (steadier than wall time under load)."""
        return min(c for _, c in self.forward.values())


def _measure_forward(bb: Any, results: dict[str, Result], sizes: Sequence[int], forward_images: int,
                     repeat: int) -> None:
    rng = np.random.default_rng(1)
    batches = {size: bb.preprocess(rng.integers(0, 256, (size, bb.input_size, bb.input_size, 3), np.uint8))
               for size in sizes}
    for runtime in results:  # warm up: OpenVINO compiles per new shape
        bb.set_runtime(runtime)
        for batch in batches.values():
            bb.runner(batch)
    calls = {size: math.ceil(forward_images / size) for size in sizes}  # whole batches per run
    runs = {(runtime, size): (lambda batch=batch, n=calls[size]: [bb.runner(batch) for _ in range(n)])
            for runtime in results for size, batch in batches.items()}
    for (runtime, size), (wall, cpu) in _in_turns(bb, runs, repeat).items():
        n = calls[size] * size
        results[runtime].forward[size] = (n / wall, cpu / n)


def _measure_end_to_end(bb: Any, results: dict[str, Result], paths: dict[str, Path], batch_size: int,
                        repeat: int) -> None:
    runs = {(runtime, batch_size): (lambda: _embed_files(bb, paths, batch_size)) for runtime in results}
    for (runtime, _), (wall, cpu) in _in_turns(bb, runs, repeat).items():
        results[runtime].end_to_end = (len(paths) / wall, cpu / len(paths))


def _embed_files(bb: Any, paths: dict[str, Path], batch_size: int) -> None:
    """What ``match`` does first: embed JPEG files into a fresh embedding cache."""
    from framesim.embeddings import EmbeddingCache, embed_missing
    from framesim.images import load_image

    with tempfile.TemporaryDirectory() as cache_dir:
        # The same loader as match: JPEGs decoded at the smallest DCT scale that still covers the input.
        embed_missing(bb, EmbeddingCache(cache_dir, bb), list(paths), lambda k: load_image(paths[k], bb.input_size),
                      batch_size=batch_size, progress=False)


def _in_turns(bb: Any, runs: dict[tuple[str, int], Callable[[], object]], repeat: int
              ) -> dict[tuple[str, int], tuple[float, float]]:
    """Median (wall, CPU) seconds of each ``(runtime, batch size)`` run, all runs taking turns within each
    repeat, so that load from other processes, which comes and goes, spreads over all of them."""
    times: dict[tuple[str, int], list[tuple[float, float]]] = {key: [] for key in runs}
    for _ in range(repeat):
        for (runtime, size), fn in runs.items():
            bb.set_runtime(runtime)
            times[runtime, size].append(_median_times(fn, 1))
    return {key: (statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for key, t in times.items()}


def _print_table(rows: Sequence[Result], cpu: CpuPeak, batch_size: int) -> None:
    tf = {r.backbone: r for r in rows if r.runtime == "tensorflow"}
    print()
    print(f"{'backbone':20s} {'runtime':12s} {'GFLOP/img':>9s} {'batch':>5s} {'fwd img/s':>9s} {'x TF':>5s} "
          f"{'CPU ms/img':>10s} {'x TF CPU':>8s} {'GFLOP/s':>7s} {'%peak':>5s} {'%peak CPU':>9s} {'e2e img/s':>9s} "
          f"{'e2e/fwd':>7s} {'e2e CPU ms':>10s}")
    per_core_peak = cpu.peak_gflops / cpu.cores
    for r in rows:
        best = r.best_batch
        ips, cpu_s = r.forward[best]
        gflops = r.flops * ips / 1e9
        cpu_gflops = r.flops / cpu_s / 1e9  # per busy core: steadier than wall time on a shared machine
        reference = tf.get(r.backbone)
        ratio = f"{ips / reference.forward[reference.best_batch][0]:5.2f}" if reference else f"{'-':>5s}"
        cpu_ratio = f"{reference.least_cpu / r.least_cpu:8.2f}" if reference else f"{'-':>8s}"
        e2e = e2e_ratio = e2e_cpu = "-"
        if r.end_to_end:
            e2e = f"{r.end_to_end[0]:.1f}"
            e2e_ratio = f"{r.end_to_end[0] / ips:.2f}"
            e2e_cpu = f"{r.end_to_end[1] * 1e3:.1f}"
        print(f"{r.backbone:20s} {r.runtime:12s} {r.flops / 1e9:9.2f} {best:5d} {ips:9.1f} {ratio} "
              f"{cpu_s * 1e3:10.1f} {cpu_ratio} {gflops:7.1f} {100 * gflops / cpu.peak_gflops:5.0f} "
              f"{100 * cpu_gflops / per_core_peak:9.0f} {e2e:>9s} {e2e_ratio:>7s} {e2e_cpu:>10s}")
    print(f"\nx TF: best-batch forward images/s over TensorFlow's best; x TF CPU: the same with CPU time per "
          f"image, each at its thriftiest batch size; %peak: achieved GFLOP/s (wall) over "
          f"{cpu.peak_gflops:.0f}; %peak CPU: FLOPs per CPU-second over one core's peak; e2e: batches of "
          f"{batch_size}; e2e/fwd: end-to-end over the best forward.")


def _jpeg_frames(folder: Path, images: int) -> dict[str, Path]:
    """720p JPEG frames with some structure (smooth noise), as extract would store them."""
    from framesim.images import pixel_sha256

    rng = np.random.default_rng(0)
    paths = {}
    for i in range(images):
        small = rng.integers(0, 256, (45, 80, 3), dtype=np.uint8)
        img = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_CUBIC)
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        paths[pixel_sha256(img)] = path
    return paths
