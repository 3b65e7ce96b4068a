"""Example images: pixel hashes remembered by file identity, so an unchanged example is not decoded again."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import framesim.examples as examples_mod
from framesim.examples import load_examples
from framesim.images import load_image, pixel_sha256


def _write(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cv2.imwrite(str(path), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))


def test_hashes_are_remembered_and_a_changed_file_is_hashed_again(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder, cache = tmp_path / "ex", tmp_path / "cache" / "hashes.json"
    folder.mkdir()
    for i in range(3):
        _write(folder / f"{i}.png", i)
    first, _, failed = load_examples([folder], hash_cache=cache)
    assert not failed and cache.is_file()
    assert [e.sha256 for e in first] == [pixel_sha256(load_image(folder / f"{i}.png")) for i in range(3)]
    decoded: list[Path] = []
    real = examples_mod.load_image
    monkeypatch.setattr(examples_mod, "load_image", lambda p, *a: decoded.append(Path(p)) or real(p, *a))
    again, _, _ = load_examples([folder], hash_cache=cache)
    assert again == first and decoded == []  # nothing decoded
    _write(folder / "1.png", 99)  # new pixels under the same name
    st = (folder / "1.png").stat()
    os.utime(folder / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    changed, _, _ = load_examples([folder], hash_cache=cache)
    assert decoded == [folder / "1.png"]
    assert changed[1].sha256 == pixel_sha256(real(folder / "1.png")) != first[1].sha256
    cache.write_text("{not json")  # a damaged cache is ignored: everything is hashed again
    decoded.clear()
    assert load_examples([folder], hash_cache=cache)[0] == changed and len(decoded) == 3
