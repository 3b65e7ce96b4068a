"""Persistent caches (issue #6): each kind x each damage is detected, noted in one line and rebuilt, and the
rebuilt result equals a clean build; nothing damaged or foreign is ever used.

Cache kinds: embedding shards and dedupe thumbnails (``EmbeddingCache``: header.json with format, version,
backbone, weights, dim; a sidecar with count, dim and the sha256 of both arrays per shard), converted
EfficientNet-Lite weights (.npz: JSON header with format, model and source sha256; zip CRCs on the arrays)
and converted ONNX models (sidecar with format, model key and the file's sha256).

Damage kinds: truncated data, one flipped byte in the data, another format version in the header, and a
header of another backbone / dim / model.

Already covered elsewhere and not repeated here: a shard without its sidecar and the dim-only header change
(test_embeddings.py), a weights cache from another source file or not a zip (test_efficientnet_lite.py),
a missing sidecar or an unloadable file the sidecar vouches for (test_runtime.py), pickled code in a .pth
header or state dict (test_efficientnet_lite.py::test_reader_refuses_pickled_code).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_video
from test_embeddings import CountingLoader, images

from framesim.backbones import BackboneError, get_backbone
from framesim.backbones import efficientnet_lite as E
from framesim.backbones.torch_pth import MAGIC_NUMBER, PROTOCOL_VERSION
from framesim.cli import cli
from framesim.dedupe import _ThumbnailSpec, frame_thumbnails
from framesim.embeddings import VERSION, EmbeddingCache, cache_dir, embed_missing

DAMAGES = ["truncated", "flipped byte", "other version", "other backbone"]
REPO = Path(__file__).resolve().parents[1]


def flip_byte(path: Path, where: float = 0.75) -> None:
    """XOR one byte well inside the data (not the file's header)."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x5A
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def edit_json(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def one_warning(text: str) -> str:
    """The single note the user sees about the cache."""
    lines = [line for line in text.splitlines() if "warning" in line.lower()]
    assert len(lines) == 1, text
    return lines[0]


def damage_store(folder: Path, damage: str, other_backbone: str) -> None:
    """Damage an EmbeddingCache folder (embedding shards and thumbnails share this format)."""
    vecs = sorted(folder.glob("shard-*.vecs.npy"))[0]
    if damage == "truncated":
        truncate(vecs)
    elif damage == "flipped byte":
        flip_byte(vecs)  # a vector changes: the sidecar's sha256 no longer matches
    elif damage == "other version":
        edit_json(folder / "header.json", version=VERSION + 1)
    else:
        edit_json(folder / "header.json", backbone=other_backbone, dim=64)


# ---------------------------------------------------------------- embedding shards


@pytest.mark.parametrize("damage", DAMAGES)
def test_embedding_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    bb = get_backbone("tiny-image")
    table = images(12)
    keys = list(table)

    def build(root: Path, loader: Callable[[str], np.ndarray]) -> tuple[EmbeddingCache, np.ndarray]:
        cache = EmbeddingCache(root, bb, flush_every=6)  # two shards
        embed_missing(bb, cache, keys, loader, batch_size=6, progress=False)
        return cache, cache.get(keys)

    _, clean = build(tmp_path / "clean", CountingLoader(table))
    first, _ = build(tmp_path / "cache", CountingLoader(table))
    damage_store(first.dir, damage, "phash")
    capsys.readouterr()

    loader = CountingLoader(table)
    reopened = EmbeddingCache(tmp_path / "cache", bb, flush_every=6)
    note = one_warning(capsys.readouterr().err)
    assert str(first.dir) in note and ("rebuilding" in note or "damaged" in note)
    lost = 12 if damage in ("other version", "other backbone") else 6  # the whole cache, or the one shard
    assert len(reopened) == 12 - lost  # the damaged vectors are not there to be used
    embed_missing(bb, reopened, keys, loader, batch_size=6, progress=False)
    assert loader.calls == lost
    np.testing.assert_array_equal(reopened.get(keys), clean)
    # and the rebuilt cache is clean: the next open says nothing and embeds nothing
    again = EmbeddingCache(tmp_path / "cache", bb)
    assert len(again) == 12 and "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("sidecar", ["[1, 2]", '"text"', "{}", "not json"])
def test_embedding_shard_sidecar_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    sidecar: str) -> None:
    # A sidecar that is JSON but not an object used to escape as AttributeError (meta.get on a list).
    bb = get_backbone("tiny-image")
    table = images(4)
    cache = EmbeddingCache(tmp_path, bb)
    embed_missing(bb, cache, list(table), CountingLoader(table), progress=False)
    next(cache.dir.glob("shard-*.json")).write_text(sidecar)
    (cache.dir / "shard-x.json").write_text("{}")  # a stray name used to crash int() parsing
    capsys.readouterr()
    assert len(EmbeddingCache(tmp_path, bb)) == 0
    assert "damaged embedding shard" in capsys.readouterr().err
    assert not list(cache.dir.glob("shard-*"))


def test_unreadable_header_is_noted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bb = get_backbone("tiny-image")
    table = images(4)
    cache = EmbeddingCache(tmp_path, bb)
    embed_missing(bb, cache, list(table), CountingLoader(table), progress=False)
    header = cache.dir / "header.json"
    header.write_bytes(header.read_bytes()[:10])  # used to be dropped without a word
    capsys.readouterr()
    assert len(EmbeddingCache(tmp_path, bb)) == 0
    assert "rebuilding" in one_warning(capsys.readouterr().err)


# ---------------------------------------------------------------- dedupe thumbnails


@pytest.mark.parametrize("damage", DAMAGES)
def test_dedupe_thumbnails(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str) -> None:
    rng = np.random.default_rng(0)
    files = {}
    for i in range(6):
        path = tmp_path / "frames" / f"{i}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        files[f"{i:064x}"] = path
    keys = list(files)
    decoded: list[str] = []

    def path_of(key: str) -> Path:
        decoded.append(key)
        return files[key]

    clean = frame_thumbnails(tmp_path / "clean", keys, path_of)
    frame_thumbnails(tmp_path / "cache", keys[:3], path_of)  # two shards: 3 + 3
    frame_thumbnails(tmp_path / "cache", keys, path_of)
    damage_store(cache_dir(tmp_path / "cache", _ThumbnailSpec()), damage, "_thumbnail8")  # type: ignore[arg-type]
    capsys.readouterr()
    decoded.clear()
    rebuilt = frame_thumbnails(tmp_path / "cache", keys, path_of)
    one_warning(capsys.readouterr().err)
    assert len(decoded) == (6 if damage in ("other version", "other backbone") else 3)
    assert rebuilt.keys() == clean.keys()
    for k in keys:
        np.testing.assert_array_equal(rebuilt[k], clean[k])


# ---------------------------------------------------------------- converted EfficientNet-Lite weights

LITE0 = E.VARIANTS["efficientnet-lite0"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_converted_efficientnet_weights(home: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    if E.package_weights_path(LITE0) is None:
        pytest.skip(f"pip package {LITE0.dist} not installed")
    clean, meta = E.load_imagenet_weights(LITE0)
    cache = E.cache_path(LITE0)
    assert meta["cache"] == "written" and cache.is_file()
    if damage == "truncated":
        truncate(cache)
    elif damage == "flipped byte":
        flip_byte(cache, 0.5)  # inside an array: the zip member's CRC no longer matches
    elif damage == "other version":
        E.save_converted(cache, clean, {**meta, "format": E.CACHE_FORMAT + 1})
    else:  # lite1's header (and one array of another shape): another model's weights under this name
        arrays = {**clean, "_fc.weight": clean["_fc.weight"][:, :10]}
        E.save_converted(cache, arrays, {**meta, "model": "efficientnet-lite1"})
    with caplog.at_level(logging.WARNING):
        rebuilt, meta = E.load_imagenet_weights(LITE0)
    assert meta["cache"] == "written"  # converted again from the .pth, not read from the damaged file
    (note,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "rebuilding the weights cache" in note and "\n" not in note
    assert rebuilt.keys() == clean.keys() and all(np.array_equal(rebuilt[k], clean[k]) for k in clean)
    assert E.load_imagenet_weights(LITE0)[1]["cache"] == "hit"


# ---------------------------------------------------------------- converted ONNX models


@pytest.mark.slow  # builds Keras models and exports ONNX (TensorFlow)
@pytest.mark.parametrize("damage", DAMAGES)
def test_converted_onnx_model(home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
                              damage: str) -> None:
    pytest.importorskip("onnxruntime")
    from test_runtime import SmallNet

    from framesim.backbones import runtime as R

    batch = [np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    clean = SmallNet(runtime="onnxruntime")
    want = clean.embed(batch)
    SmallNet(runtime="onnxruntime", seed=1)  # another model's file and sidecar beside it
    key = R.model_key(clean.model)[:20]
    (path,) = [p for p in (home / "runtimes").glob("*.onnx") if key in p.name]
    (other,) = [p for p in (home / "runtimes").glob("*.onnx") if key not in p.name]
    sidecar = path.with_suffix(".json")
    if damage == "truncated":
        truncate(path)
    elif damage == "flipped byte":
        flip_byte(path)
    elif damage == "other version":
        edit_json(sidecar, format=R.CACHE_FORMAT + 1)
    else:  # another model's file with its own (valid) sidecar under this model's name
        path.write_bytes(other.read_bytes())
        sidecar.write_text(other.with_suffix(".json").read_text())
    exports: list[Path] = []
    real = R._export_onnx
    monkeypatch.setattr(R, "_export_onnx", lambda model, p: (exports.append(p), real(model, p)))
    with caplog.at_level(logging.WARNING):
        rebuilt = SmallNet(runtime="onnxruntime")
    assert rebuilt.runtime == "onnxruntime" and len(exports) == 1
    notes = [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]
    assert len(notes) == 1 and path.name in notes[0]
    np.testing.assert_allclose(rebuilt.embed(batch), want, atol=1e-6)


# ---------------------------------------------------------------- no pickle anywhere


def test_no_data_is_read_with_pickle() -> None:
    # Every reader of cached or user data: np.load with allow_pickle=False, JSON, Parquet/CSV, or the
    # restricted unpickler of torch_pth (by design: .pth files are pickles). Nothing else may unpickle.
    risky = re.compile(r"\bpickle\.(loads?|Unpickler)\b|allow_pickle\s*=\s*True|\bjoblib\b|torch\.load|"
                       r"\bshelve\b|\bmarshal\.loads?\b|\bdill\b|pd\.read_pickle|\bnp\.load\(")
    found = []
    for path in sorted((REPO / "framesim").rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if risky.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    allowed = [f for f in found if ("torch_pth.py" in f and "Unpickler" in f)
               or ("np.load(" in f and "allow_pickle=False" in f)]
    assert set(found) == set(allowed), sorted(set(found) - set(allowed))


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_malicious_pth_is_refused_by_the_backbone_and_the_cli(tmp_path: Path) -> None:
    # The reader's own test (test_efficientnet_lite.py) calls load_state_dict; this goes through what a user
    # runs: get_backbone(weights=FILE) and `framesim match --weights FILE`, with the exploit in the state dict.
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(MAGIC_NUMBER, 2) + pickle.dumps(PROTOCOL_VERSION, 2)
                     + pickle.dumps({"little_endian": True}, 2)
                     + pickle.dumps({"_fc.weight": _Exploit(f"touch {marker}")}, 2) + pickle.dumps([], 2))
    with pytest.raises(BackboneError, match=r"evil\.pth.*refusing to load (posix|os|nt)\.system"):
        get_backbone("efficientnet-lite0", weights=str(evil))
    assert not marker.exists()
    examples = tmp_path / "examples"
    examples.mkdir()
    cv2.imwrite(str(examples / "a.png"), np.zeros((32, 32, 3), np.uint8))
    dataset = tmp_path / "dataset"
    video = write_video(tmp_path / "v.mp4", 4, size=(32, 32))
    assert CliRunner().invoke(cli, ["extract", str(video), "-o", str(dataset), "-q"]).exit_code == 0
    result = CliRunner().invoke(cli, ["match", str(examples), "-d", str(dataset), "-b", "efficientnet-lite0",
                                      "--weights", str(evil), "-o", str(tmp_path / "run"), "-q", "--no-report"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "refusing to load" in line
    assert not marker.exists()
