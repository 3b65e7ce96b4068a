"""Example images (the queries of a match): finding them, naming them, hashing and loading their pixels."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from framesim.dataset import FrameDataset
from framesim.images import ImageError, find_images, load_image, pixel_sha256


@dataclass(frozen=True)
class Example:
    """An example image: its name in the pairs table, its file and its pixel hash."""

    name: str
    path: Path
    sha256: str


def examples_root(inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """The folder example names are relative to: the folder given, or the common parent of the files."""
    paths = [Path(p).resolve() for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    return Path(os.path.commonpath([p if p.is_dir() else p.parent for p in paths]))


def load_examples(
    inputs: Sequence[str | os.PathLike[str]], on_error: Callable[[str], None] | None = None
) -> tuple[list[Example], Path, list[dict[str, str]]]:
    """Find example images, decode each once to hash its pixels; return (examples, root, failures)."""
    root = examples_root(inputs)
    examples, failures = [], []
    for path in find_images(inputs):
        name = path.resolve().relative_to(root).as_posix()
        try:
            sha = pixel_sha256(load_image(path))
        except ImageError as exc:
            failures.append({"example": name, "reason": str(exc)})
            if on_error:
                on_error(str(exc))
            continue
        examples.append(Example(name, path, sha))
    return examples, root, failures


def frame_loader(dataset: FrameDataset, manifest: pd.DataFrame, min_side: int | None = None,
                 min_long_side: int | None = None) -> Callable[[str], np.ndarray]:
    """``key -> RGB image``; ``min_side``, ``min_long_side``: see ``images.load_image`` (decode JPEGs
    at reduced scale)."""
    path_of = dict(zip(manifest["sha256"], manifest["path"], strict=True))
    return lambda key: load_image(dataset.frame_path(path_of[key]), min_side, min_long_side)


def example_loader(examples: Sequence[Example], min_side: int | None = None,
                   min_long_side: int | None = None) -> Callable[[str], np.ndarray]:
    path_of = {ex.sha256: ex.path for ex in examples}
    return lambda key: load_image(path_of[key], min_side, min_long_side)

