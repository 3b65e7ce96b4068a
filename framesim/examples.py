"""Example images (the queries of a match): finding them, naming them, hashing and loading their pixels."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from framesim._io import write_json
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
    inputs: Sequence[str | os.PathLike[str]], on_error: Callable[[str], None] | None = None,
    hash_cache: str | os.PathLike[str] | None = None,
) -> tuple[list[Example], Path, list[dict[str, str]]]:
    """Find example images, decode each once to hash its pixels; return (examples, root, failures).

    ``hash_cache``: a JSON file remembering each file's pixel hash by its path, size, mtime, ctime and
    inode, so an unchanged example is not decoded again (a second match of 156 examples: 0.4 s -> 0.02
    s). Any change to the file, or a damaged cache file, means decoding it again."""
    root = examples_root(inputs)
    known = _read_hashes(hash_cache)
    examples, failures, changed = [], [], False
    for path in find_images(inputs):
        resolved = path.resolve()
        name = resolved.relative_to(root).as_posix()
        ident = _identity(path)
        entry = known.get(str(resolved), {})
        sha = entry.get("sha256") if ident is not None and entry.get("identity") == ident else None
        if sha is None:
            try:
                sha = pixel_sha256(load_image(path))
            except ImageError as exc:
                failures.append({"example": name, "reason": str(exc)})
                if on_error:
                    on_error(str(exc))
                continue
            if ident is not None:
                known[str(resolved)] = {"identity": ident, "sha256": sha}
                changed = True
        examples.append(Example(name, path, sha))
    if hash_cache is not None and changed:
        with contextlib.suppress(OSError):  # only a cache: a read-only dataset still matches
            Path(hash_cache).parent.mkdir(parents=True, exist_ok=True)
            write_json(hash_cache, {"format": _HASHES_FORMAT, "files": known})
    return examples, root, failures


_HASHES_FORMAT = "framesim-example-hashes-1"


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None  # load_image names the reason
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_hashes(path: str | os.PathLike[str] | None) -> dict[str, dict[str, object]]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == _HASHES_FORMAT else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, dict) and isinstance(v.get("sha256"), str)}


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

