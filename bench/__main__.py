"""Throughput benchmarks, each a ratio measured in one run so machine noise cancels out.

    python -m bench extract ../shared/media/videos/bikes.mp4      # extract at 1 fps vs decode-only
    python -m bench backbones -b efficientnet-lite0 -b resnet50   # model forward vs end-to-end embed
    python -m bench backbones -b efficientnet-lite0:avg -b efficientnet-lite0:gem+flip   # descriptor costs
    python -m bench verify ../shared/media/videos/bikes.mp4        # local-feature verification costs

Medians of ``--repeat`` runs are printed.
"""

from __future__ import annotations

import click

from bench.backbones import backbones
from bench.extract import extract
from bench.verify import verify


@click.group()
def main() -> None:
    """framesim benchmarks."""


main.add_command(extract)
main.add_command(backbones)
main.add_command(verify)

if __name__ == "__main__":
    main()
