"""Fuzzing the readers and the CLI (issue #6): whatever is in a manifest, a pairs table, a ground-truth CSV
or an option, framesim answers with the documented table or one clear error, never a traceback.

Everything runs on a tiny real dataset and run (a 12-frame 64x48 video, the cheap tiny-image backbone);
hypothesis examples are bounded so the file takes well under a minute.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from conftest import write_video
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framesim.cli import cli
from framesim.dataset import EXTRA_COLUMNS, MANIFEST_COLUMNS, DataFileError, FrameDataset
from framesim.matching import PAIRS_COLUMNS, read_ground_truth, read_pairs

# `scratch` is only the parent folder: every example makes its own folder in it (fresh()).
_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=_CHECKS)
FEW = settings(max_examples=10, deadline=None, suppress_health_check=_CHECKS)


@dataclass(frozen=True)
class World:
    """A real dataset and run, made once; tests copy what they damage."""

    root: Path
    video: Path
    dataset: Path
    examples: Path
    run: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("fuzz")
    video = write_video(root / "v.mp4", 12, size=(64, 48), scene_starts=(0, 6))
    dataset, examples, run = root / "dataset", root / "examples", root / "run"
    assert invoke(["extract", str(video), "-o", str(dataset), "-q", "--every", "2"]).exit_code == 0
    examples.mkdir()
    frame = cv2.imread(str(next((dataset / "frames").rglob("*.jpg"))))
    cv2.imwrite(str(examples / "a.png"), frame)
    cv2.imwrite(str(examples / "b.png"), 255 - frame)
    result = invoke(["match", str(examples), "-d", str(dataset), "-o", str(run), "-b", "tiny-image",
                     "--score", "cosine", "-k", "3", "--no-report", "-q"])
    assert result.exit_code == 0, result.output
    return World(root, video, dataset, examples, run)


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args)


def assert_clean_exit(result: Result, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    """Exit 0, 1 or 2 by sys.exit / click, never an exception escaping; an error is one line."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {result.exception!r} for output {result.output!r}")
    assert result.exit_code in allowed, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
        assert len(errors) == 1, result.stderr
        assert errors[0].strip() not in ("error:", "Error:")


@pytest.fixture
def scratch() -> Iterator[Path]:
    # hypothesis runs many examples per test call: a fresh folder per example comes from tempfile, not tmp_path
    with tempfile.TemporaryDirectory(prefix="framesim-fuzz-") as d:
        yield Path(d)


def fresh(scratch: Path) -> Path:
    d = Path(tempfile.mkdtemp(dir=scratch))
    return d


# ---------------------------------------------------------------- values a hostile file may hold

HOSTILE_TEXT = st.sampled_from(["", "a,b", 'say "hi"', "line\nbreak", "tab\there", "<script>", "ünï©ødé 🎞",
                                "../../etc/passwd", "\x00", "1e999", "nan", "-1", "9" * 40])
ODD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, -1, 0.5, 2**63 - 1, 2**64 - 1, 1e300, -0.0])


@st.composite
def column_values(draw: st.DrawFn, n: int) -> Any:
    """A column of ``n`` values of one odd kind (or mixed): what a foreign writer might have stored."""
    kind = draw(st.sampled_from(["text", "numbers", "ints", "huge", "bools", "none", "mixed", "bytes"]))
    if kind == "text":
        return draw(st.lists(st.one_of(HOSTILE_TEXT, st.text(max_size=8)), min_size=n, max_size=n))
    if kind == "numbers":
        return draw(st.lists(st.one_of(ODD_NUMBERS, st.floats()), min_size=n, max_size=n))
    if kind == "ints":
        return np.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), np.int64)
    if kind == "huge":
        return np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), np.uint64)
    if kind == "bools":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n))
    if kind == "none":
        return [None] * n
    if kind == "bytes":
        return draw(st.lists(st.binary(max_size=6), min_size=n, max_size=n))
    return draw(st.lists(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=4)), min_size=n,
                         max_size=n)) if n else []


@st.composite
def mutated_table(draw: st.DrawFn, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a few of: columns dropped, renamed, duplicated, replaced by odd values; rows cut."""
    df = table.copy()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["drop", "rename", "values", "values", "rows", "extra"]))
        col = draw(st.sampled_from(list(df.columns))) if len(df.columns) else None
        if op == "drop" and col is not None:
            df = df.drop(columns=col)
        elif op == "rename" and col is not None:
            df = df.rename(columns={col: draw(HOSTILE_TEXT) or "x"})
        elif op == "values" and col is not None:
            values = draw(column_values(len(df)))
            try:
                df[col] = values
            except (TypeError, ValueError):
                df[col] = pd.Series(list(values), dtype=object)
        elif op == "rows":
            df = df.iloc[: draw(st.integers(0, len(df)))]
        elif op == "extra":
            df[draw(HOSTILE_TEXT) or "y"] = draw(column_values(len(df)))
    return df


def to_parquet_bytes(df: pd.DataFrame) -> bytes | None:
    """The table as Parquet, or None when pyarrow cannot store these values at all (mixed objects)."""
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, index=False)
    except Exception:  # pyarrow refuses mixed object columns: such a file cannot exist, nothing to test
        return None
    return buf.getvalue()


@st.composite
def damaged_bytes(draw: st.DrawFn, good: bytes) -> bytes:
    """Random bytes, a truncated copy, or a copy with flipped bytes."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "empty"]))
    if kind == "random":
        return draw(st.binary(max_size=512))
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good) - 1))]
    if kind == "empty":
        return b""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


# ---------------------------------------------------------------- (a) the manifest


def check_manifest(root: Path, damaged_file: Path) -> pd.DataFrame | None:
    """FrameDataset.manifest(): the contract's columns and dtypes, or DataFileError naming the file."""
    try:
        df = FrameDataset(root).manifest()
    except DataFileError as exc:
        msg = str(exc)
        assert msg.startswith(str(damaged_file)) and "\n" not in msg, msg
        return None
    assert list(df.columns[: len(MANIFEST_COLUMNS) + 1]) == MANIFEST_COLUMNS + EXTRA_COLUMNS
    for c in ("frame_index", "width", "height"):
        assert df[c].dtype == np.int64 and (df[c] >= 0).all()
    assert df["timestamp_s"].dtype == np.float64 and np.isfinite(df["timestamp_s"]).all()
    for c in ("frame_id", "video", "path", "sha256", "video_id"):
        assert all(isinstance(v, str) for v in df[c])
    assert df["frame_id"].is_unique
    return df


def copy_dataset(world: World, dest: Path) -> Path:
    """The dataset's small files (manifest, markers); the frame images are not needed to read it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dataset.json", "manifest.parquet", "manifest.csv"):
        shutil.copy(world.dataset / name, dest / name)
    return dest


@FUZZ
@given(data=st.data())
def test_fuzzed_manifest_gives_the_contract_or_one_clear_error(world: World, scratch: Path,
                                                               data: st.DataObject) -> None:
    root = copy_dataset(world, fresh(scratch) / "ds")
    good = pd.read_parquet(world.dataset / "manifest.parquet")
    # The damage goes to manifest.parquet or to a pending chunk (both are read as the manifest).
    target = data.draw(st.sampled_from([root / "manifest.parquet", root / "state" / "pending" / "0001.parquet"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    if data.draw(st.booleans()):
        blob = to_parquet_bytes(data.draw(mutated_table(good)))
        if blob is None:
            return
    else:
        blob = data.draw(damaged_bytes((world.dataset / "manifest.parquet").read_bytes()))
    target.write_bytes(blob)
    check_manifest(root, target)


@FEW
@given(csv=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_manifest_csv_is_never_read_and_is_rewritten(world: World, scratch: Path, csv: bytes) -> None:
    # manifest.csv is an export for people; the parquet is the truth, so a damaged CSV changes nothing.
    root = copy_dataset(world, fresh(scratch) / "ds")
    (root / "manifest.csv").write_bytes(csv)
    ds = FrameDataset(root)
    pd.testing.assert_frame_equal(ds.manifest(), FrameDataset(world.dataset).manifest())
    (root / "state" / "pending").mkdir(parents=True)  # a pending chunk makes consolidate rewrite both files
    good = pd.read_parquet(world.dataset / "manifest.parquet")
    good.iloc[:1].to_parquet(root / "state" / "pending" / "0001.parquet", index=False)
    with ds.lock():
        ds.consolidate()
    assert (root / "manifest.csv").read_bytes() == (world.dataset / "manifest.csv").read_bytes()


def test_manifest_with_hostile_video_paths_round_trips(world: World, tmp_path: Path) -> None:
    root = copy_dataset(world, tmp_path / "ds")
    df = pd.read_parquet(root / "manifest.parquet")
    names = ['a,b "c".mp4', "line\nbreak.mp4", "ünï©ødé 🎞.mp4", "<script>.mp4", "'; DROP TABLE x.mp4"]
    df["video"] = [names[i % len(names)] for i in range(len(df))]
    df.to_parquet(root / "manifest.parquet", index=False)
    ds = FrameDataset(root)
    assert check_manifest(root, root / "manifest.parquet")["video"].tolist() == df["video"].tolist()
    (root / "state" / "pending").mkdir(parents=True)
    df.iloc[:1].to_parquet(root / "state" / "pending" / "0001.parquet", index=False)
    with ds.lock():
        ds.consolidate()  # the CSV export quotes them: read back, every name is intact
    csv = pd.read_csv(root / "manifest.csv", keep_default_na=False)
    assert csv["video"].tolist() == df["video"].tolist()


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "missing column", "text frame_index"])
def test_cli_says_which_manifest_is_broken(world: World, tmp_path: Path, damage: str) -> None:
    root = tmp_path / "ds"
    shutil.copytree(world.dataset, root, ignore=shutil.ignore_patterns("embeddings"))
    manifest = root / "manifest.parquet"
    good = pd.read_parquet(manifest)
    if damage == "random bytes":
        manifest.write_bytes(np.random.default_rng(0).bytes(300))
    elif damage == "truncated":
        manifest.write_bytes(manifest.read_bytes()[:-100])
    elif damage == "missing column":
        good.drop(columns="sha256").to_parquet(manifest, index=False)
    else:
        good.assign(frame_index="12a").to_parquet(manifest, index=False)
    for args in (["match", str(world.examples), "-d", str(root), "-o", str(tmp_path / "run"), "-b", "tiny-image",
                  "--no-report", "-q"],
                 ["extract", str(world.video), "-o", str(root), "-q"]):
        result = invoke(args)
        assert_clean_exit(result, allowed=(2,))
        assert f"error: {manifest}: " in result.stderr
    # The report only uses the manifest for thumbnails: it still works, and says why they are missing.
    run = tmp_path / "run2"
    shutil.copytree(world.run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "dataset": str(root)}))
    result = invoke(["report", str(run)])
    assert_clean_exit(result, allowed=(0,))
    if damage in ("random bytes", "truncated"):  # (the report reads neither sha256 nor frame_index)
        assert "thumbnails are unavailable" in (run / "report.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------- (b) pairs and ground truth


def check_pairs(run: Path, damaged_file: Path) -> None:
    try:
        df = read_pairs(run, verify=False)
    except DataFileError as exc:
        msg = str(exc)
        assert msg.startswith(str(damaged_file.parent if not damaged_file.exists() else damaged_file)), msg
        assert "\n" not in msg
        return
    assert list(df.columns[: len(PAIRS_COLUMNS)]) == PAIRS_COLUMNS
    for c in ("frame_index", "rank"):
        assert df[c].dtype == np.int64
    for c in ("timestamp_s", "score"):
        assert df[c].dtype == np.float64 and np.isfinite(df[c]).all()
    for c in ("backbone", "example", "frame_id", "video"):
        assert all(isinstance(v, str) for v in df[c])


def damage_pairs(world: World, scratch: Path, data: st.DataObject) -> tuple[Path, Path] | None:
    """A copy of the run whose pairs table (Parquet, or CSV without Parquet) is damaged or mutated."""
    run = fresh(scratch) / "run"
    shutil.copytree(world.run, run)
    good = pd.read_parquet(world.run / "pairs.parquet")
    fmt = data.draw(st.sampled_from(["parquet", "csv"]))
    target = run / f"pairs.{fmt}"
    if fmt == "csv":
        (run / "pairs.parquet").unlink()  # the CSV is read only without the Parquet
    if data.draw(st.booleans()):
        table = data.draw(mutated_table(good))
        if fmt == "parquet":
            blob = to_parquet_bytes(table)
            if blob is None:
                return None
        else:
            blob = table.to_csv(index=False).encode()
    else:
        blob = data.draw(damaged_bytes(target.read_bytes()))
    target.write_bytes(blob)
    return run, target


@FUZZ
@given(data=st.data())
def test_fuzzed_pairs_give_the_contract_or_one_clear_error(world: World, scratch: Path, data: st.DataObject) -> None:
    damaged = damage_pairs(world, scratch, data)
    if damaged is not None:
        check_pairs(*damaged)


@FEW
@given(data=st.data())
def test_fuzzed_pairs_still_give_a_report_or_one_error_line(world: World, scratch: Path, data: st.DataObject) -> None:
    # `framesim report` reads the same files itself (and builds a page: ~1 s, hence fewer examples)
    damaged = damage_pairs(world, scratch, data)
    if damaged is not None:
        assert_clean_exit(invoke(["report", str(damaged[0])]), allowed=(0, 2))


_ITEMS = st.one_of(st.integers(), HOSTILE_TEXT, st.dictionaries(
    st.sampled_from(["name", "example", "reason", "dim"]), st.one_of(st.integers(), HOSTILE_TEXT), max_size=2))
_JSON_VALUES = st.one_of(st.none(), st.integers(), st.floats(), HOSTILE_TEXT, st.lists(_ITEMS, max_size=3),
                         st.dictionaries(HOSTILE_TEXT, st.integers(), max_size=2))
_RUN_KEYS = st.sampled_from(["backbones", "examples", "failed_examples", "dataset", "examples_root", "run", "index",
                             "top_k", "min_score", "seconds", "n_frames", "ground_truth", "evaluation", "created"])


@FEW
@given(info=st.dictionaries(_RUN_KEYS, _JSON_VALUES, max_size=6))
def test_fuzzed_run_json_still_gives_a_report(world: World, scratch: Path, info: dict[str, Any]) -> None:
    run = fresh(scratch) / "run"
    shutil.copytree(world.run, run)
    (run / "run.json").write_text(json.dumps({**json.loads((world.run / "run.json").read_text()), **info}))
    assert_clean_exit(invoke(["report", str(run)]), allowed=(0,))


@FUZZ
@given(body=st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(st.one_of(HOSTILE_TEXT, st.text(max_size=6), ODD_NUMBERS.map(str)), min_size=1, max_size=4),
             max_size=5).map(lambda rows: pd.DataFrame(rows).to_csv(index=False, header=False).encode()),
    st.lists(st.tuples(HOSTILE_TEXT, HOSTILE_TEXT, st.one_of(ODD_NUMBERS.map(str), HOSTILE_TEXT)), max_size=5)
    .map(lambda rows: pd.DataFrame(rows, columns=["example", "video", "timestamp_s"]).to_csv(index=False).encode()),
))
def test_fuzzed_ground_truth_gives_the_columns_or_one_clear_error(scratch: Path, body: bytes) -> None:
    path = fresh(scratch) / "truth.csv"
    path.write_bytes(body)
    try:
        truth = read_ground_truth(path)
    except DataFileError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
        return
    assert {"example", "video", "timestamp_s"} <= set(truth.columns)
    assert all(isinstance(v, str) for v in truth["example"]) and all(isinstance(v, str) for v in truth["video"])
    assert truth["timestamp_s"].dtype == np.float64


@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage\x00", b"", b"example,video\nx,y\n", b'a,"b\n'])
def test_cli_match_with_broken_ground_truth_says_so_in_one_line(world: World, tmp_path: Path, body: bytes) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_bytes(body)
    result = invoke(["match", str(world.examples), "-d", str(world.dataset), "-o", str(tmp_path / "run"),
                     "-b", "tiny-image", "--score", "cosine", "--ground-truth", str(truth), "--no-report", "-q"])
    assert_clean_exit(result, allowed=(2,))
    assert f"error: {truth}: " in result.stderr


# ---------------------------------------------------------------- (c) the CLI's options

def mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` about 5 times in 6: with several options, a good share of the examples then runs the whole
    command rather than stopping at the first refused option."""
    return st.integers(0, 5).flatmap(lambda i: odd if i == 0 else valid)


SCORES = st.floats(-1, 1).map(repr)


NUMBERS_AS_TEXT = st.one_of(
    # plausible values (so most examples reach the library, not only click's parser), then odd ones
    st.integers(0, 30).map(str), st.floats(0, 30).map(repr),
    st.floats().map(repr), st.integers(-(10**30), 10**30).map(str), HOSTILE_TEXT,
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e-320", "1e308", "0", "-0", "0x10", "1_000", " 3 ", "", "--"]))


@FUZZ
@given(opts=st.lists(st.tuples(st.sampled_from(["--fps", "--every", "--start", "--end", "--max-frames",
                                                 "--scene-threshold", "--format"]),
                               mostly(st.sampled_from(["0.1", "0.3", "1", "2", "25", "0.5", "0.05"]), NUMBERS_AS_TEXT)),
                     max_size=3, unique_by=lambda o: o[0]),
       flags=st.lists(st.sampled_from(["--scene", "--keyframes"]), max_size=2, unique=True))
def test_fuzzed_extract_options(world: World, scratch: Path, opts: list[tuple[str, str]], flags: list[str]) -> None:
    args = ["extract", str(world.video), "-o", str(fresh(scratch) / "ds"), "-q", *flags]
    for name, value in opts:
        args += [name, value]
    result = invoke(args)
    assert_clean_exit(result, allowed=(0, 2))  # one good video: it works or the options are refused


INDEXES = st.one_of(
    st.sampled_from(["auto", "Flat", "HNSW32", "HNSW32|efSearch=-5", "Flat|nprobe=abc", "IVF1,Flat|nprobe=1",
                     "LSH", "garbage", "", "|", "Flat|", "IDMap,Flat", "HNSW0", "IVF1,SQ8"]),
    # (free text without IVF/PQ: those train k-means with more centroids than the 6 frames, the known bug
    # that test_ivf_with_more_lists_than_frames_is_a_usage_error records)
    st.text(alphabet="FlatIVHNSWPQ0123456789,|=_ ", max_size=14).filter(lambda s: "IVF" not in s and "PQ" not in s))




@FUZZ
@given(top_k=mostly(st.integers(1, 20).map(str), NUMBERS_AS_TEXT),
       min_score=st.one_of(st.none(), mostly(SCORES, NUMBERS_AS_TEXT)),
       index=mostly(st.sampled_from(["auto", "Flat", "HNSW32", "HNSW16|efSearch=4", "IVF1,Flat|nprobe=1"]), INDEXES),
       dedupe=st.one_of(st.none(), mostly(st.floats(0, 1).map(repr), NUMBERS_AS_TEXT)),
       runtime=mostly(st.sampled_from(["auto", "tensorflow", "onnxruntime", "openvino"]), st.text(max_size=6)),
       backbone=mostly(st.sampled_from(["tiny-image", "phash", "tiny-image@cosine", "phash@normalized+whiten"]),
                       st.one_of(st.sampled_from(["phash:gem", "tiny-image@", "@cosine", "nope", "", "PHASH",
                                                  "phash@x", "tiny-image@cosine+whiten+whiten"]),
                                 st.text(max_size=10))))
def test_fuzzed_match_options(world: World, scratch: Path, top_k: str, min_score: str | None, index: str,
                              dedupe: str | None, runtime: str, backbone: str) -> None:
    args = ["match", str(world.examples), "-d", str(world.dataset), "-o", str(fresh(scratch) / "run"), "-q",
            "--no-report", "--score", "cosine", "--top-k", top_k, "--index", index, "--runtime", runtime,
            "-b", backbone]
    args += ["--min-score", min_score] if min_score is not None else []
    args += ["--dedupe", dedupe] if dedupe is not None else []
    result = invoke(args)
    assert_clean_exit(result, allowed=(0, 2))


@pytest.mark.parametrize("option", [("extract", "--fps"), ("extract", "--start"), ("extract", "--end"),
                                    ("match", "--min-score"), ("match", "--dedupe")])
def test_nan_is_refused_by_the_option_itself(world: World, tmp_path: Path, option: tuple[str, str]) -> None:
    # click.FloatRange lets NaN through (every comparison with it is false): --min-score nan kept no pair.
    command, name = option
    args = ([command, str(world.video), "-o", str(tmp_path / "ds")] if command == "extract" else
            [command, str(world.examples), "-d", str(world.dataset), "-o", str(tmp_path / "run"), "-b", "phash"])
    result = invoke([*args, "-q", name, "nan"])
    assert_clean_exit(result, allowed=(2,))
    assert f"Invalid value for '{name}': 'nan' is not a number." in result.stderr


def test_ivf_with_more_lists_than_frames_is_a_usage_error(world: World, tmp_path: Path) -> None:
    result = invoke(["match", str(world.examples), "-d", str(world.dataset), "-o", str(tmp_path / "run"), "-q",
                     "-b", "tiny-image", "--score", "cosine", "--index", "IVF4096,Flat", "--no-report"])
    assert_clean_exit(result, allowed=(2,))
    assert "index 'IVF4096,Flat' cannot be trained on" in result.stderr and "use Flat or fewer lists" in result.stderr


# -- file parsers written by hand: images and video containers --------------------------------------
def _seed_files() -> dict[str, bytes]:
    """Small valid files of each kind framesim parses itself before a decoder sees them."""
    rng = np.random.default_rng(0)
    bgr = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (40, 30), interpolation=cv2.INTER_NEAREST)
    bgra = np.dstack([bgr, np.full((30, 40), 128, np.uint8)])
    files = {ext: cv2.imencode(ext, img)[1].tobytes()
             for ext, img in ((".jpg", bgr), (".png", bgra), (".bmp", bgr), (".webp", bgra))}
    from PIL import Image  # an animated GIF and a JPEG with EXIF orientation: what OpenCV cannot write

    gif, jpeg = io.BytesIO(), io.BytesIO()
    frames = [Image.fromarray(np.full((30, 40, 3), c, np.uint8)) for c in (10, 120, 240)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(bgr[..., ::-1]).save(jpeg, "JPEG", exif=exif)
    files[".gif"], files[".exif.jpg"] = gif.getvalue(), jpeg.getvalue()
    return files


SEED_FILES = _seed_files()


@st.composite
def damaged(draw: st.DrawFn, seeds: dict[str, bytes]) -> tuple[str, bytes]:
    """A seed file cut short, with bytes overwritten or inserted, or random bytes."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["cut", "overwrite", "insert", "random"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "cut":
            del data[at:]
        elif kind == "overwrite":
            data[at:at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data = bytearray(draw(st.binary(max_size=256)))
    return name, bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=damaged(SEED_FILES))
def test_fuzzed_images_load_or_give_one_line(case: tuple[str, bytes], tmp_path: Path) -> None:
    # The header, chunk, EXIF and marker parsers in images.py read untrusted bytes: whatever the damage,
    # an RGB image or ImageError naming the file, never another exception.
    from framesim.images import ImageError, declared_size, load_image

    name, data = case
    path = tmp_path / f"x{name}"
    path.write_bytes(data)
    declared_size(data)  # must not raise
    for min_side in (None, 8):
        try:
            rgb = load_image(path, min_side)
        except ImageError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        else:
            assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0


@pytest.fixture(scope="module")
def mp4_seed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = write_video(tmp_path_factory.mktemp("mp4") / "seed.mp4", 8, size=(64, 48))
    return path.read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_video_containers_open_or_give_one_line(data: st.DataObject, mp4_seed: bytes, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    # The MP4 box walk that explains a file FFmpeg cannot open, and both decoders, on damaged files:
    # frames or VideoError naming the file, never another exception, and no decoder chatter on stderr.
    from framesim.keyframes import KeyframeReader
    from framesim.video import VideoError, VideoReader, unopenable_reason

    _, blob = data.draw(damaged({".mp4": mp4_seed}))
    path = tmp_path / "x.mp4"
    path.write_bytes(blob)
    reason = unopenable_reason(path)
    assert isinstance(reason, str) and reason and "\n" not in reason
    for reader in (VideoReader, KeyframeReader):
        try:
            with reader(path) as video:
                for _ in video:
                    pass
        except VideoError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
    assert capfd.readouterr().err == ""
