"""Start a cached converted runtime without TensorFlow: an index from a cheap "locator" to the file.

The converted-model cache (``runtime.ConvertedModel``) is keyed by a hash of the Keras model, so finding
a file that way needs TensorFlow and the built model: about 4 s, most of a short ``match``. A locator
names the same model from outside: backbone, input side, the sha256 of the weights file, the sha256 of
the source files that build and export the model, ``CACHE_FORMAT``, the ONNX opset, and the installed
versions of TensorFlow, Keras, the converters and numpy (package metadata: nothing is imported).

After the full path has converted (or found) and checked a model, ``record`` writes
``$FRAMESIM_HOME/runtimes/locators/<backbone>-<side>-<hash>.json``: the locator, the file's name, its
model key and its sha256. ``open_indexed`` opens the runtime straight on that file only when the entry
is for this very locator, the file's sidecar is for the same key and format and records a passed check
against TensorFlow for this runtime and version, and the file still has its sha256. Anything else (no
entry, a damaged or foreign entry or file, a runtime not checked yet or that failed) gives None, and the
caller takes the full path, which rebuilds and warns as before and writes the entry again. The sidecar
stays the one record of the checks, so the index never vouches for a check the sidecar lacks.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from framesim._io import sha256_file, write_json
from framesim.backbones import runtime as R

log = logging.getLogger(__name__)

#: bump when the locator or the entry changes meaning; older entries are then ignored
LOCATOR_FORMAT = 1
#: distributions whose version changes the exported file (TensorFlow under each of its pip names)
VERSIONED = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos", "keras",
             *R.CONVERTER_PACKAGES, "numpy")


def package_versions() -> dict[str, str | None]:
    """Installed versions of ``VERSIONED`` (None: not installed), read from metadata without importing."""
    versions: dict[str, str | None] = {}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def make_locator(backbone: str, side: int | None, weights_file: Path, code: Sequence[Path]
                 ) -> dict[str, Any] | None:
    """The locator of ``backbone`` at input ``side`` (None: any size) with weights from ``weights_file``,
    built by the source files ``code`` (``runtime``'s own export code is added); None if a file
    cannot be read (then there is no fast start, only the full path)."""
    try:
        weights = {"suffix": weights_file.suffix.lower(), "sha256": sha256_file(weights_file)}
        # The source, not a version number: an edited architecture or export must not find the old file.
        sources = {Path(p).name: sha256_file(p) for p in (*code, R.__file__)}
    except OSError as exc:
        log.debug("%s: no runtime locator: %s", backbone, exc)
        return None
    return {"format": LOCATOR_FORMAT, "cache_format": R.CACHE_FORMAT, "opset": R.ONNX_OPSET,
            "backbone": backbone, "input": side, "weights": weights, "code": sources,
            "versions": package_versions()}


def entry_path(locator: dict[str, Any]) -> Path:
    from framesim.backbones.efficientnet_lite import framesim_home  # lazily: that module imports this one

    digest = hashlib.sha256(json.dumps(locator, sort_keys=True).encode()).hexdigest()
    stem = f"{locator['backbone']}-{locator['input'] or 'any'}-{digest[:20]}"
    return framesim_home() / "runtimes" / "locators" / f"{stem}.json"


def record(locator: dict[str, Any], runner: R.Runner) -> None:
    """Remember the cached file ``runner`` runs under ``locator``; nothing for TensorFlow or a temporary file."""
    stored = getattr(runner, "stored", None)
    side = locator["input"]
    if not isinstance(runner, R.ConvertedRunner) or stored is None or runner.spatial != (side, side):
        return
    entry = {"format": LOCATOR_FORMAT, "locator": locator, "file": stored.path.name, "key": stored.key,
             "sha256": stored.meta.get("sha256")}
    try:
        write_json(entry_path(locator), entry)
    except OSError as exc:  # read-only or full home: the full path again next time, no harm
        log.debug("%s: cannot write the runtime index: %s", locator["backbone"], exc)


def open_indexed(locator: dict[str, Any], runtime: str, *, name: str, fallback: R.TensorFlowRunner
                 ) -> R.ConvertedRunner | None:
    """The runner for ``runtime`` (a converted one, or ``"auto"``) on the file indexed under ``locator``,
    or None when the full path must decide (see the module docstring). ``fallback`` runs the batches the
    file does not take; it should build its Keras model only when first called."""
    path = entry_path(locator)
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.info("%s: ignoring the runtime index %s: %s", name, path.name, exc)
        return None
    if not isinstance(entry, dict) or entry.get("format") != LOCATOR_FORMAT or entry.get("locator") != locator:
        log.info("%s: ignoring the runtime index %s: written for another model or format", name, path.name)
        return None
    file_name = entry.get("file")
    if not isinstance(file_name, str) or Path(file_name).name != file_name or not file_name.endswith(".onnx"):
        log.info("%s: ignoring the runtime index %s: no file name", name, path.name)
        return None
    onnx = path.parent.parent / file_name
    try:
        meta = json.loads(onnx.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None  # the full path says what is wrong with the sidecar
    if (not isinstance(meta, dict) or meta.get("format") != R.CACHE_FORMAT or meta.get("key") != entry.get("key")
            or meta.get("sha256") != entry.get("sha256") or not isinstance(meta.get("checks"), dict)):
        return None
    chosen = _checked_runtime(runtime, meta["checks"])
    if chosen is None:
        return None
    try:
        if sha256_file(onnx) != entry["sha256"]:
            return None  # damaged or replaced: the full path rebuilds it and says so
        side = locator["input"]
        runner = R.ConvertedRunner(chosen, onnx, (side, side), fallback, R.cpu_threads())
    except Exception as exc:  # OSError, or each runtime's own kinds for an unreadable file
        log.debug("%s: cannot open %s in %s: %s", name, onnx.name, chosen, exc)
        return None
    log.debug("%s: %s on %s from the runtime index", name, chosen, onnx.name)
    return runner


def _checked_runtime(runtime: str, checks: dict[str, Any]) -> str | None:
    """The runtime the full path would pick from these recorded checks, or None if it would have to
    check one first (or would fail over to TensorFlow, or raise: it says why, not us)."""
    for candidate in R.AUTO_ORDER if runtime == "auto" else (runtime,):
        if not R.installed(candidate):
            if runtime == "auto":
                continue
            return None
        check = checks.get(f"{candidate} {R._version(R.RUNTIME_PACKAGES[candidate])}")
        if not isinstance(check, dict):
            return None
        if check.get("passed") is True:
            return candidate
        if runtime != "auto":
            return None
    return None
