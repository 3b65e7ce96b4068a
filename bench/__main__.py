"""Throughput benchmarks, each a ratio measured in one run so machine noise cancels out.

    python -m bench extract ../shared/media/videos/bikes.mp4      # extract at 1 fps vs decode-only
    python -m bench backbones -b efficientnet-lite0 -b resnet50   # model forward vs end-to-end embed
    python -m bench backbones -b efficientnet-lite0:avg -b efficientnet-lite0:gem+flip   # descriptor costs
    python -m bench verify ../shared/media/videos/bikes.mp4        # local-feature verification costs
    python -m bench index [--quick]                                # Flat vs IVF/HNSW: build, search, recall, memory
    python -m bench memory                                         # peak RSS per stage, 1 vs 4 min of video
    python -m bench pipeline --minutes 5                           # extract + embed + match, extrapolated to 1 h
    python -m bench all [--quick]                                  # all of the above (~30 min; quick: a few)
    python -m bench endtoend [--quick] [--seeds 0,1,2,3]           # framesim vs the seed pipeline: speed, µAP
    python -m bench store [--sizes 20000] [--keep DIR]             # FAISS vs Qdrant Edge: ingest, open, latency, disk
    python -m bench serve [--frames 20000] [--requests 10]         # framesim serve under 4 concurrent clients
    python -m bench selfjoin [--n 1000000] [--keep DIR]            # kNN self-join: time, peak RSS, recall
    python -m bench engine [--quick]                               # local vs Ray engine: extract, embed, overhead

Medians of ``--repeat`` runs are printed.
"""

from __future__ import annotations

import time

import click

from bench.backbones import backbones
from bench.endtoend import endtoend
from bench.engine import engine
from bench.extract import extract
from bench.index import index
from bench.memory import memory
from bench.pipeline import make_video, pipeline
from bench.selfjoin import selfjoin
from bench.serve import serve
from bench.store import store
from bench.verify import verify


@click.group()
def main() -> None:
    """framesim benchmarks."""


@main.command(name="all")
@click.option("--quick", is_flag=True, help="Smaller sizes and fewer repeats: a few minutes.")
@click.pass_context
def all_benchmarks(ctx: click.Context, quick: bool) -> None:
    """Every benchmark with its defaults (or --quick settings), one table after another."""
    # a real-content 720p30 clip (bench.pipeline.make_video), cached after its first encoding
    video = make_video(20 if quick else 60)
    steps: list[tuple[str, click.Command, dict[str, object]]] = [
        ("extract", extract, {"video": video, "repeat": 1 if quick else 3}),
        ("backbones", backbones, {"images": 32, "repeat": 1} if quick else {}),
        ("verify", verify, {"video": video, "frames": 10 if quick else 20}),
        ("index", index, {"quick": quick}),
        ("memory", memory, {"lengths": (0.5, 1.0) if quick else (1.0, 4.0)}),
        ("pipeline", pipeline, {"minutes": 1.0 if quick else 5.0}),
    ]
    for name, command, params in steps:
        click.echo(f"\n=== {name} ===")
        started = time.perf_counter()
        ctx.invoke(command, **params)
        click.echo(f"({name}: {time.perf_counter() - started:.0f} s)")


main.add_command(extract)
main.add_command(backbones)
main.add_command(verify)
main.add_command(index)
main.add_command(memory)
main.add_command(pipeline)
main.add_command(endtoend)
main.add_command(store)
main.add_command(serve)
main.add_command(selfjoin)
main.add_command(engine)

if __name__ == "__main__":
    main()
