"""A real multi-node Ray cluster on this machine, in a loopback-only network namespace, that runs a
scenario of commands and can kill every process of one worker node while a command runs.

Used by tests/test_engine_cluster.py; reusable for benchmarks::

    python tests/ray_cluster.py SPEC.json RESULT.json        # runs itself again under `unshare --net`

or from Python: ``result = run_scenario(spec)``. The spec (JSON)::

    {"workers": 2, "cpus_per_worker": 2, "head_cpus": 0,
     "env": {"NAME": "value"},                          # for every command
     "log_dir": "/abs/folder",                          # each step's stdout/stderr (default: a temp folder)
     "steps": [{"name": "extract-ray", "argv": ["framesim", "extract", ..., "--ray-address", "{address}"],
                "cwd": "/abs", "env": {...}, "timeout": 300,
                "kill": {"task": "framesim-extract",   # kill a node where a worker is titled ray::<task>
                         "min_task_seconds": 1.0,      # ... once it has been for this long
                         "glob": "/abs/DS/frames/*/*.jpg", "min_files": 1}}]}  # ... and this matches

``{address}`` in argv and env values becomes the cluster's GCS address (RAY_ADDRESS is set too). After
a step that killed a node, a fresh one replaces it (``"replace_killed": false``: not), and the last live
worker node is never killed; the next step starts once the GCS has called the node dead (60 s at most;
``"await_detection": false`` in the kill rule: at once). Also: ``"health_check": false`` keeps Ray's slow
defaults for noticing a dead node, ``"system_config"`` adds to Ray's ``_system_config``, ``"timeout"``
bounds a script run.

The result (JSON) has the address, the start-up seconds and per step its exit code, seconds, output
tails and, for a kill (``kill``): when (``at_seconds``), the processes killed, the workers caught
frozen in the task (``tasks_when_killed``), whether the step was still running, how long the GCS took to
call the node dead (``detected_dead_after_s``); ``leftover_processes``: what outlived the shutdown.

Why this shape: Ray rewrites 127.0.0.1 to the machine's address, so the cluster would listen on (and
talk through) a real interface; in a new network namespace only ``lo`` exists. All nodes share
127.0.0.1 and this process (``ray.cluster_utils.Cluster``) starts their raylets; a node is its raylet
plus the raylet's descendants (agents, workers), so killing those is the node dying.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

#: every process of a cluster inherits this variable (a unique token), so leftovers can be found
TOKEN_VAR = "FRAMESIM_RAY_CLUSTER_TOKEN"
#: a short folder for RAY_TMPDIR and HOME, made (and removed) by run_scenario
TMP_VAR = "FRAMESIM_RAY_CLUSTER_TMP"
#: the GCS calls a raylet dead after about period x threshold: 1.5 s, not Ray's ~15 s
HEALTH_CHECK = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
POLL_S = 0.1
TAIL_CHARS = 4000


# -- outside the namespace (no Ray needed) ------------------------------------------------------------
def unshare_argv() -> list[str]:
    """Runs a program in a new network namespace (not root: as root mapped into a user namespace)."""
    return ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "-rn"]


def namespace_unavailable() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None when it can."""
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is missing"
    cmd = " ".join(unshare_argv())
    try:
        proc = subprocess.run([*unshare_argv(), "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{cmd} true` failed: {exc}"
    return None if proc.returncode == 0 else f"`{cmd} true` exited {proc.returncode}: {proc.stderr.strip()[:200]}"


def require_ray_namespace() -> None:
    """Skip the calling test without Ray or a namespace; with FRAMESIM_REQUIRE_RAY=1 (CI) fail instead."""
    import pytest

    required = os.environ.get("FRAMESIM_REQUIRE_RAY") == "1"
    try:
        import ray  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("FRAMESIM_REQUIRE_RAY=1 but Ray is not installed (pip install 'framesim[ray]')")
        pytest.skip("Ray is not installed (pip install 'framesim[ray]')")
    reason = namespace_unavailable()
    if reason:
        if required:
            pytest.fail(f"FRAMESIM_REQUIRE_RAY=1 but no loopback-only network namespace: {reason}")
        pytest.skip(f"needs a loopback-only network namespace: {reason}")


def isolated_argv(argv: list[str]) -> list[str]:
    """``argv`` run in a new network namespace with only ``lo``, up (a Ray it starts stays on this machine)."""
    return [*unshare_argv(), sys.executable, str(Path(__file__).resolve()), "--exec", *argv]


def run_scenario(spec: dict[str, Any], *, timeout: float = 600.0) -> dict[str, Any]:
    """Run ``spec`` (see the module docstring) in a fresh network namespace and return its result.

    Whatever of the cluster outlives the harness (by 5 s), its ``timeout`` or an interrupt is killed
    (found by token). Raises RuntimeError with the harness's output if it wrote no result."""
    token = f"rc{os.getpid()}-{time.time_ns()}"
    with tempfile.TemporaryDirectory(prefix="rcs", dir="/tmp") as tmp:  # short: Unix socket paths
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        proc = subprocess.Popen([*unshare_argv(), sys.executable, str(Path(__file__).resolve()), "--inside",
                                 str(spec_path), str(result_path)], env={**os.environ, TOKEN_VAR: token, TMP_VAR: tmp},
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            output = proc.communicate(timeout=timeout)[0]
        except BaseException as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            kill_token_processes(token, grace_s=0)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            try:  # a survivor holding the pipe open must not block us
                output = f"[harness killed after {timeout:.0f} s]\n{proc.communicate(timeout=30)[0]}"
            except subprocess.TimeoutExpired:
                output = f"[harness killed after {timeout:.0f} s]"
        leftovers = kill_token_processes(token)
        if not result_path.exists():
            raise RuntimeError(f"the cluster harness exited {proc.returncode} without a result:\n"
                               f"{output[-TAIL_CHARS:]}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    result.update(token=token, harness_exit=proc.returncode, harness_output_tail=output[-TAIL_CHARS:],
                  leftover_processes=leftovers)
    return result


def token_processes(token: str) -> list[int]:
    """Pids of processes whose environment holds ``TOKEN_VAR=token`` (zombies have none)."""
    needle, found = f"{TOKEN_VAR}={token}".encode(), []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    found.append(int(entry.name))
    return found


def kill_token_processes(token: str, grace_s: float = 5.0) -> list[dict[str, Any]]:
    """Give the processes that carry ``token`` ``grace_s`` to exit, SIGKILL the rest and return those."""
    deadline = time.monotonic() + grace_s
    while (pids := [p for p in token_processes(token) if _proc_alive(p)]) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    left = [{"pid": pid, "title": _proc_title(pid)} for pid in pids]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def _proc_alive(pid: int) -> bool:
    """Running or stopped: not gone, not a zombie (a zombie has done all it will do)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _proc_title(pid: int) -> str:
    """A process's title as ps shows it (Ray workers set theirs to ``ray::<task name>``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = [x.decode(errors="replace") for x in fh.read().split(b"\0")]
    except OSError:
        return "?"
    return (parts[0] if parts[0].startswith("ray::") else " ".join(parts).strip())[:200]


def _is_task(title: str, task: str) -> bool:
    return title == f"ray::{task}" or title.startswith(f"ray::{task} ")


# -- inside the namespace ---------------------------------------------------------------------------
def loopback_up() -> None:
    """Bring ``lo`` up (a new network namespace starts with it down); an ioctl, so `ip` is not needed."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH", fcntl.ioctl(s, siocgifflags, struct.pack("16sH", b"lo", 0)))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


class Harness:
    """The cluster and the scenario, run by this process inside the namespace."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.cluster: Any = None
        self.workers: list[Any] = []  # every worker node started, killed ones included
        self.dead: set[int] = set()  # indexes into workers
        self.killed_at = 0.0  # time.monotonic() of the last kill
        self.own_tmp: str | None = None

    def start(self) -> dict[str, Any]:
        t0 = time.monotonic()
        loopback_up()
        base = os.environ.get(TMP_VAR) or tempfile.mkdtemp(prefix="rc", dir="/tmp")
        self.own_tmp = None if os.environ.get(TMP_VAR) else base
        # RAY_TMPDIR short (its Unix sockets: 107 bytes at most); a private HOME, as a stale
        # ~/.ray/auth_token of an earlier cluster breaks the workers' join; framesim's weights cache
        # stays where it was (it defaults to ~/.cache/framesim)
        os.environ.setdefault("FRAMESIM_HOME", str(Path.home() / ".cache" / "framesim"))
        for var, name in (("RAY_TMPDIR", "r"), ("HOME", "h")):
            os.environ[var] = os.path.join(base, name)
            os.makedirs(os.environ[var], exist_ok=True)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault(TOKEN_VAR, f"rc{os.getpid()}-{time.time_ns()}")
        from ray.cluster_utils import Cluster

        config = {**(HEALTH_CHECK if self.spec.get("health_check", True) else {}), **self.spec.get("system_config", {})}
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": int(self.spec.get("head_cpus", 0)), "include_dashboard": False, "_system_config": config})
        self.add_workers(int(self.spec.get("workers", 2)))
        return {"address": self.cluster.address, "start_seconds": round(time.monotonic() - t0, 2),
                "ray_tmpdir": os.environ["RAY_TMPDIR"]}

    def add_workers(self, n: int) -> None:
        for _ in range(n):
            # 2 logical CPUs each by default: with 1, Ray keeps starting and stopping workers
            self.workers.append(self.cluster.add_node(num_cpus=int(self.spec.get("cpus_per_worker", 2))))
        self.cluster.wait_for_nodes()

    def live_workers(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.dead]

    def replace_dead(self) -> int:
        """Start a fresh worker node for each killed one; return how many were started."""
        for i in self.dead:
            if self.workers[i] in self.cluster.worker_nodes:  # its processes are dead: off the books
                self.cluster.remove_node(self.workers[i], allow_graceful=False)
        missing = max(0, int(self.spec.get("workers", 2)) - len(self.live_workers()))
        self.add_workers(missing)
        return missing

    def shutdown(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
        if self.own_tmp:
            shutil.rmtree(self.own_tmp, ignore_errors=True)

    # -- nodes ------------------------------------------------------------------------------------
    def node_processes(self, index: int) -> list[Any]:
        import psutil  # importing ray put its copy on sys.path

        with contextlib.suppress(psutil.Error):
            raylet = psutil.Process(int(self.workers[index].all_processes["raylet"][0].process.pid))
            return [raylet, *raylet.children(recursive=True)]
        return []

    def running_tasks(self, task: str) -> dict[int, list[dict[str, Any]]]:
        """Live worker node index -> its workers titled ``ray::<task>`` (pid, title)."""
        out: dict[int, list[dict[str, Any]]] = {}
        for i in self.live_workers():
            for p in self.node_processes(i)[1:]:
                if _is_task(title := _proc_title(p.pid), task):
                    out.setdefault(i, []).append({"pid": p.pid, "title": title})
        return out

    def freeze_node(self, index: int) -> list[Any]:
        """SIGSTOP every process of worker node ``index`` and return them: the raylet first, so it can
        start no worker after the listing (repeated until it no longer grows); frozen, nothing writes."""
        import psutil

        procs: dict[int, Any] = {}
        while more := [p for p in self.node_processes(index) if p.pid not in procs]:
            for p in more:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGSTOP)
                procs[p.pid] = p
        return list(procs.values())

    @staticmethod
    def thaw(procs: list[Any]) -> None:
        import psutil

        for p in reversed(procs):  # the raylet last: it must not find its workers stopped
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGCONT)

    def kill_frozen(self, index: int, procs: list[Any]) -> list[dict[str, Any]]:
        """SIGKILL what ``freeze_node(index)`` returned: the node is dead. Does not wait."""
        import psutil

        killed = [{"pid": p.pid, "title": _proc_title(p.pid)} for p in procs]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        self.killed_at = time.monotonic()
        self.dead.add(index)
        return killed

    def node_alive(self, index: int) -> bool | None:
        """What the GCS says of worker node ``index`` (None: not known)."""
        with contextlib.suppress(Exception):
            for n in self.cluster.global_state.node_table():
                if n["NodeID"] == self.workers[index].node_id:
                    return bool(n["Alive"])
        return None

    # -- the scenario ---------------------------------------------------------------------------
    def run_step(self, step: dict[str, Any], log_dir: Path, address: str) -> dict[str, Any]:
        def fill(value: Any) -> str:
            return str(value).replace("{address}", address)

        name = step.get("name", "step")
        env = {**os.environ, "RAY_ADDRESS": address,
               **{k: fill(v) for k, v in {**self.spec.get("env", {}), **step.get("env", {})}.items()}}
        out_path, err_path = log_dir / f"{name}.out", log_dir / f"{name}.err"
        kill: dict[str, Any] = {}
        t0 = time.monotonic()
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen([fill(a) for a in step["argv"]], cwd=step.get("cwd"), env=env,
                                    stdout=out, stderr=err)
            watcher = threading.Thread(target=self.watch_and_kill, args=(step["kill"], proc, t0, kill),
                                       daemon=True) if step.get("kill") else None
            if watcher:
                watcher.start()
            try:
                code: int | None = proc.wait(timeout=float(step.get("timeout", 600)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            seconds = time.monotonic() - t0
            if watcher:
                kill["stop"] = True
                watcher.join(timeout=70)
                kill.pop("stop", None)
        return {"name": name, "argv": step["argv"], "exit_code": code, "timed_out": code is None,
                "seconds": round(seconds, 2), "stdout_tail": _tail(out_path), "stderr_tail": _tail(err_path),
                "stdout": str(out_path), "stderr": str(err_path), **({"kill": kill} if watcher else {})}

    def watch_and_kill(self, rule: dict[str, Any], proc: subprocess.Popen[Any], t0: float,
                       info: dict[str, Any]) -> None:
        """While ``proc`` runs, wait for ``rule`` to hold on a worker node and kill that node; then note
        how long the GCS took to call it dead and which task workers ran after it (into ``info``)."""
        task, min_s = rule["task"], float(rule.get("min_task_seconds", 0.5))
        pattern, min_files = rule.get("glob"), int(rule.get("min_files", 1))
        first_seen: dict[int, float] = {}  # node -> since when it has had a task worker
        info.update(killed=False, tasks_seen=False)
        while proc.poll() is None and not info.get("stop"):
            now, running = time.monotonic(), self.running_tasks(task)
            first_seen = {i: first_seen.get(i, now) for i in running}
            info["tasks_seen"] = info["tasks_seen"] or bool(running)
            ready = [i for i in running if now - first_seen[i] >= min_s]
            files = len(glob.glob(pattern, recursive=True)) if pattern else 0
            if ready and len(self.live_workers()) < 2:  # its tasks would have nowhere to go: the run would hang
                info["refused"] = "only one live worker node"
                break
            if ready and files >= (min_files if pattern else 0):
                target = max(ready, key=lambda i: (len(running[i]), now - first_seen[i]))
                procs = self.freeze_node(target)
                # the listing is up to a poll old: kill only a node caught (frozen) in the middle of a task
                busy = [{"pid": p.pid, "title": t} for p in procs if _is_task(t := _proc_title(p.pid), task)]
                if busy:
                    killed = self.kill_frozen(target, procs)
                    info.update(killed=True, step_running_after_kill=proc.poll() is None, node=target,
                                node_id=self.workers[target].node_id, at_seconds=round(self.killed_at - t0, 2),
                                task_seconds=round(now - first_seen[target], 2), tasks_when_killed=busy,
                                files_matched=files, processes=killed, all_dead=_wait_dead(killed))
                    break
                self.thaw(procs)
                info["thawed"] = info.get("thawed", 0) + 1
            time.sleep(POLL_S)
        if not info["killed"]:
            return
        after: set[int] = set()
        detected = None
        while time.monotonic() - self.killed_at < 60:
            after.update(t["pid"] for tasks in self.running_tasks(task).values() for t in tasks)
            if detected is None and self.node_alive(info["node"]) is False:
                detected = round(time.monotonic() - self.killed_at, 2)
            if (detected is not None or not rule.get("await_detection", True)) and (
                    proc.poll() is not None or info.get("stop")):
                break
            time.sleep(POLL_S)
        info.update(detected_dead_after_s=detected, task_pids_after_kill=sorted(after))


def _wait_dead(killed: list[dict[str, Any]], timeout: float = 10.0) -> bool:
    """Wait until every killed process is gone or a zombie (init reaps the orphans in its own time)."""
    deadline = time.monotonic() + timeout
    while any(_proc_alive(k["pid"]) for k in killed):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _tail(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-TAIL_CHARS:]
    except OSError:
        return ""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """``SPEC RESULT``: run the scenario in a new namespace; ``--inside SPEC RESULT``: be that run;
    ``--exec PROGRAM ARGS...``: bring lo up and become PROGRAM (``isolated_argv``)."""
    if argv[:1] == ["--exec"] and len(argv) > 1:
        loopback_up()
        os.execvp(argv[1], argv[1:])
    inside = argv[:1] == ["--inside"]
    argv = argv[1:] if inside else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec, result_path = json.loads(Path(argv[0]).read_text(encoding="utf-8")), Path(argv[1])
    if not inside:
        outcome = run_scenario(spec, timeout=float(spec.get("timeout", 3600)))
        _write_json(result_path, outcome)
        print(outcome["harness_output_tail"], end="")
        return 0 if outcome["harness_exit"] == 0 and not outcome["leftover_processes"] else 1
    result: dict[str, Any] = {"steps": []}
    harness = Harness(spec)
    log_dir = Path(spec.get("log_dir") or tempfile.mkdtemp(prefix="rclog", dir="/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        result.update(harness.start())
        print(f"cluster up in {result['start_seconds']} s at {result['address']}", flush=True)
        for step in spec.get("steps", []):
            r = harness.run_step(step, log_dir, result["address"])
            result["steps"].append(r)
            if r.get("kill", {}).get("killed") and spec.get("replace_killed", True):
                t = time.monotonic()
                r["replaced_nodes"] = harness.replace_dead()
                r["replace_seconds"] = round(time.monotonic() - t, 2)
            brief = {k: v for k, v in r.get("kill", {}).items() if k != "processes"}
            print(f"{r['name']}: exit {r['exit_code']} in {r['seconds']} s" + (f", kill {json.dumps(brief)}"
                                                                                 if brief else ""), flush=True)
    except Exception as exc:  # in the result too: the caller shows it beside the steps' outputs
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        harness.shutdown()
        _write_json(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
