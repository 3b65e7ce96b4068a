"""framesim index / search / store and match --store, through the CLI on synthetic videos with known answers."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import cv2
import pandas as pd
import pytest
from click.testing import CliRunner

from framesim.cli import cli
from framesim.matching import PAIRS_COLUMNS, read_pairs

LOCAL_STORES = ["qdrant", "faiss"]
BB = ["-b", "tiny-image"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def dataset(runner: CliRunner, tmp_path: Path, make_video: Callable[..., Path]) -> Path:
    """Two videos of two scenes each, every 2nd frame: 30 frames."""
    ds = tmp_path / "ds"
    for name, starts in (("a.mp4", (0, 15)), ("b.mp4", (0, 8))):
        video = make_video(name, n_frames=30, fps=10, scene_starts=starts)
        res = runner.invoke(cli, ["extract", str(video), "-o", str(ds), "--every", "2", "-q"])
        assert res.exit_code == 0, res.output
    return ds


def frame_image(ds: Path, tmp_path: Path, row: int, name: str) -> tuple[Path, pd.Series]:
    """A re-encoded, shrunk copy of one dataset frame (a query whose source is known)."""
    frame = pd.read_parquet(ds / "manifest.parquet").iloc[row]
    img = cv2.imread(str(ds / frame["path"]))
    out = tmp_path / name
    cv2.imwrite(str(out), cv2.resize(img, (80, 60)), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return out, frame


def assert_same_ranking(a: pd.DataFrame, b: pd.DataFrame, tol: float = 1e-5) -> None:
    """Equal pairs up to the order of ties: the same scores per example (1e-5), and the same frames for
    each score, except in the last group, which the top-k cut may split differently (identical frames
    in two videos tie exactly, and engines order ties differently)."""
    assert a["example"].tolist() == b["example"].tolist() and a["rank"].tolist() == b["rank"].tolist()
    assert (a["score"] - b["score"]).abs().max() < tol
    for (_, ga), (_, gb) in zip(a.groupby("example"), b.groupby("example"), strict=True):
        tie = ga["score"].round(5).to_numpy()
        for value in set(tie) - {tie[-1]}:
            assert set(ga["frame_id"][tie == value]) == set(gb["frame_id"][tie == value])


def info(runner: CliRunner, ds: Path, store: str) -> dict[str, str]:
    res = runner.invoke(cli, ["store", "info", "-d", str(ds), *BB, "--store", store])
    assert res.exit_code == 0, res.output
    return dict(line.split(": ", 1) for line in res.output.strip().splitlines())


@pytest.mark.parametrize("store", LOCAL_STORES)
def test_index_then_search_finds_the_source_frame(runner: CliRunner, dataset: Path, tmp_path: Path, store: str) -> None:
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "--store", store, "-q"])
    assert res.exit_code == 0, res.output
    assert "30 points added, 0 removed, 0 already there" in res.output
    query, source = frame_image(dataset, tmp_path, 20, "q.jpg")
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB, "--store", store, "-k", "3",
                              "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    pairs = read_pairs(tmp_path / "run")
    assert list(pairs.columns[:8]) == PAIRS_COLUMNS and len(pairs) == 3
    # tiny-image tells scenes apart, not the frame numbers drawn within one: the best are of the source's
    # video and scene (b.mp4, frames 8-29)
    assert source["video"].endswith("b.mp4") and source["frame_index"] >= 8
    assert set(pairs["video"]) == {source["video"]} and (pairs["frame_index"] >= 8).all()
    assert pairs["rank"].tolist() == [1, 2, 3] and pairs["score"].iloc[0] > 0.95
    assert source["video"] in res.output and "00:00:" in res.output  # the readable table
    # a rerun adds nothing; the collection is unchanged
    before = info(runner, dataset, store)
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "--store", store, "-q"])
    assert "0 points added, 0 removed, 30 already there (0 frames embedded)" in res.output
    assert info(runner, dataset, store)["checksum"] == before["checksum"]


def test_both_stores_give_identical_results_and_match_store_equals_match(
        runner: CliRunner, dataset: Path, tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    queries.mkdir()
    for row in (1, 9, 17, 26):
        frame_image(dataset, queries, row, f"q{row}.jpg")
    results = {}
    for store in LOCAL_STORES:  # (no dedupe: frames sharing a vector would tie)
        res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "--store", store, "-q", "--dedupe", "0"])
        assert res.exit_code == 0, res.output
        out = tmp_path / f"search-{store}"
        res = runner.invoke(cli, ["search", str(queries), "-d", str(dataset), *BB, "--store", store, "-k", "5",
                                  "-o", str(out)])
        assert res.exit_code == 0, res.output
        results[store] = read_pairs(out)
    assert_same_ranking(results["qdrant"], results["faiss"])
    assert info(runner, dataset, "qdrant")["checksum"] == info(runner, dataset, "faiss")["checksum"]

    runs = {}
    for store in (None, *LOCAL_STORES):
        out = tmp_path / f"match-{store}"
        res = runner.invoke(cli, ["match", str(queries), "-d", str(dataset), *BB, "-o", str(out), "-q",
                                  "--no-report", "--dedupe", "0"] + (["--store", store] if store else []))
        assert res.exit_code == 0, res.output
        runs[store] = read_pairs(out)
    for store in LOCAL_STORES:
        # (the verified score is a posterior: cosines equal to 1e-6 give scores equal to about 1e-5)
        assert_same_ranking(runs[store], runs[None], tol=1e-4)
        assert (runs[store]["cosine"] - runs[None]["cosine"]).abs().max() < 1e-5


def test_index_is_incremental_and_exclude_drops_a_video(runner: CliRunner, dataset: Path, tmp_path: Path,
                                                        make_video: Callable[..., Path]) -> None:
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"]).exit_code == 0
    video = make_video("c.mp4", n_frames=20, fps=10, scene_starts=(0,))
    assert runner.invoke(cli, ["extract", str(video), "-o", str(dataset), "--every", "2", "-q"]).exit_code == 0
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"])
    # (c.mp4's frames look like a.mp4's first scene: most reuse vectors already cached)
    assert re.search(r"10 points added, 0 removed, 30 already there \(\d+ frames? embedded\) -> 40 points", res.output)
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    b_video = manifest[manifest["video"].str.endswith("b.mp4")]["video"].iloc[0]
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q", "--exclude", b_video])
    assert "0 points added, 15 removed" in res.output and "-> 25 points" in res.output, res.output
    query, _ = frame_image(dataset, tmp_path, int(manifest.index[manifest["video"] == b_video][3]), "qb.jpg")
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB, "-k", "25", "-o", str(tmp_path / "r")])
    assert b_video not in set(read_pairs(tmp_path / "r")["video"])
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q", "--exclude", "nope.mp4"])
    assert res.exit_code == 2 and "--exclude nope.mp4: no such video" in res.output


def test_search_filters_by_video_and_reports_bad_input(runner: CliRunner, dataset: Path, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"]).exit_code == 0
    manifest = pd.read_parquet(dataset / "manifest.parquet")
    query, source = frame_image(dataset, tmp_path, 3, "q.jpg")
    other = next(v for v in manifest["video"].unique() if v != source["video"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    res = runner.invoke(cli, ["search", str(query), str(broken), "-d", str(dataset), *BB, "--video", other,
                              "-o", str(tmp_path / "r")])
    assert res.exit_code == 1  # one bad image: reported, the other answered
    assert "broken.jpg" in res.output and "Traceback" not in res.output
    assert set(read_pairs(tmp_path / "r")["video"]) == {other}


def test_search_without_a_collection_and_a_foreign_one_fail_in_one_line(runner: CliRunner, dataset: Path,
                                                                         tmp_path: Path) -> None:
    query, _ = frame_image(dataset, tmp_path, 3, "q.jpg")
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB])
    assert res.exit_code == 2 and "no collection here (run framesim index first)" in res.output
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"]).exit_code == 0
    # a collection built with another backbone is refused with a rebuild hint
    folder = next((dataset / "collections").glob("tiny-image*/*/qdrant"))
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), "-b", "phash", "--store", f"qdrant:{folder}"])
    assert res.exit_code == 2 and "built for backbone tiny-image" in res.output
    assert "run framesim index again" in res.output
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB, "--store", "mongo"])
    assert res.exit_code == 2 and "--store mongo: expected one of" in res.output


def test_store_export_import_round_trip(runner: CliRunner, dataset: Path, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"]).exit_code == 0
    elsewhere = tmp_path / "copy"
    res = runner.invoke(cli, ["store", "export", f"faiss:{elsewhere}", "-d", str(dataset), *BB, "-q"])
    assert res.exit_code == 0 and "30 points copied" in res.output, res.output
    res = runner.invoke(cli, ["store", "import", f"faiss:{elsewhere}", "-d", str(dataset), *BB, "--store",
                              f"qdrant:{tmp_path / 'back'}", "-q"])
    assert res.exit_code == 0, res.output
    assert (info(runner, dataset, f"qdrant:{tmp_path / 'back'}")["checksum"]
            == info(runner, dataset, "qdrant")["checksum"] == info(runner, dataset, f"faiss:{elsewhere}")["checksum"])


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import framesim.collection as collection
    from framesim.stores.faiss_store import FaissStore
    from framesim.stores.qdrant_edge import QdrantEdgeStore
    collection.UPSERT_CHUNK = 4
    calls = {"n": 0}
    for cls in (FaissStore, QdrantEdgeStore):
        original = cls.upsert
        def upsert(self, *a, _orig=original, **k):
            _orig(self, *a, **k)
            calls["n"] += 1
            if calls["n"] == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)  # a crash right after an acknowledged write
        cls.upsert = upsert
    from framesim.cli import cli
    cli(["index", "-d", sys.argv[1], "-b", "tiny-image", "--store", sys.argv[2], "-q"])
""")


@pytest.mark.parametrize("store", LOCAL_STORES)
def test_index_killed_then_rerun_equals_an_uninterrupted_run(runner: CliRunner, dataset: Path, tmp_path: Path,
                                                             store: str) -> None:
    killed = tmp_path / f"killed-{store}"
    clean = tmp_path / f"clean-{store}"
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "--store", f"{store}:{clean}", "-q"]).exit_code == 0
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for after in (2, 5):  # killed twice, at different points, before a clean rerun
        proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(dataset), f"{store}:{killed}", str(after)],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    res = runner.invoke(cli, ["index", "-d", str(dataset), *BB, "--store", f"{store}:{killed}", "-q"])
    assert res.exit_code == 0, res.output
    assert "-> 30 points" in res.output
    a, b = info(runner, dataset, f"{store}:{killed}"), info(runner, dataset, f"{store}:{clean}")
    assert (a["count"], a["checksum"]) == (b["count"], b["checksum"])


def test_a_held_collection_is_refused_naming_the_holder(runner: CliRunner, dataset: Path, tmp_path: Path) -> None:
    assert runner.invoke(cli, ["index", "-d", str(dataset), *BB, "-q"]).exit_code == 0
    folder = next((dataset / "collections").glob("tiny-image*/*/qdrant"))
    manifest = json.loads((folder / "collection.json").read_text())
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom framesim.stores.qdrant_edge import QdrantEdgeStore\n"
         "s = QdrantEdgeStore(sys.argv[1], int(sys.argv[2]), sys.argv[3])\nprint('open', flush=True)\ntime.sleep(60)",
         str(folder), str(manifest["dim"]), manifest["backbone"]],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        query, _ = frame_image(dataset, tmp_path, 3, "q.jpg")
        res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB])
        assert res.exit_code == 2 and f"in use by process {holder.pid}" in res.output, res.output
    finally:
        holder.kill()
        holder.wait()
    res = runner.invoke(cli, ["search", str(query), "-d", str(dataset), *BB])
    assert res.exit_code == 0, res.output  # the kernel dropped the lock with the holder


@pytest.mark.slow
def test_the_bundled_sample_gives_the_same_answers_from_both_stores(runner: CliRunner, tmp_path: Path) -> None:
    # The README's sample with the default backbone (real model, real video): index, search, compare.
    samples = Path(__file__).resolve().parents[1] / "samples"
    ds = tmp_path / "ds"
    assert runner.invoke(cli, ["extract", str(samples / "bikes.mp4"), "-o", str(ds), "-q"]).exit_code == 0
    found = {}
    for store in LOCAL_STORES:
        res = runner.invoke(cli, ["index", "-d", str(ds), "--store", store, "-q"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, ["search", str(samples / "examples"), "-d", str(ds), "--store", store, "-k", "3",
                                  "-o", str(tmp_path / store)])
        assert res.exit_code == 0, res.output
        found[store] = read_pairs(tmp_path / store)
    assert_same_ranking(found["qdrant"], found["faiss"])
    truth = pd.read_csv(samples / "ground_truth.csv").dropna(subset=["video"])
    best = found["qdrant"][found["qdrant"]["rank"] == 1].set_index("example")["timestamp_s"]
    # the best frame by cosine alone is within 1.5 s (frames are 1 s apart) of the source for most edits
    near = [abs(best[r.example] - r.timestamp_s) <= 1.5 for r in truth.itertuples()]
    assert sum(near) >= len(near) - 1, (best, truth)
