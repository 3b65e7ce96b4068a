"""The Ray engine: framesim's tasks as Ray Core tasks on a cluster (or on a Ray started for the run).

Plain tasks with ``max_retries``, not a Ray Data pipeline or a fixed actor pool: a task whose worker or
node dies is run again elsewhere, and because every task writes outputs named by its position through
temp files and renames, the retry overwrites what the lost attempt left instead of adding to it (a
fixed-size pool hung after a node was killed; tasks recovered). Models are loaded once per worker
process (``embed_job``), which is what an actor pool would buy.

Shared storage: the driver writes a token file into the dataset and one probe task per node that runs
tasks reads it back and writes its own reply file; a node that sees another file at the same path (a
local disk, not the shared one) or none is named in the error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from framesim.engines.base import Engine, EngineUnavailable, SharedStorageError, TaskLost

#: runs of a task after its worker or node died (Ray's own default is 3)
MAX_RETRIES = 3
#: seconds to wait for the cluster's address to accept a connection
CONNECT_TIMEOUT = 10.0
#: seconds a node may take to answer the storage probe
PROBE_TIMEOUT = 120.0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


class RayEngine(Engine):
    """Joins the cluster at ``address`` (else ``$RAY_ADDRESS``, else starts Ray on this machine)."""

    name = "ray"
    distributed = True

    def __init__(self, address: str | None = None, max_retries: int = MAX_RETRIES) -> None:
        try:
            import ray
        except ImportError:
            raise EngineUnavailable("--engine ray needs Ray, which is not installed: "
                                    "pip install 'framesim[ray]'") from None
        self._ray = ray
        self.max_retries = max_retries
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._started = False
        if not ray.is_initialized():
            if self.address:
                _check_reachable(self.address)
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=True, configure_logging=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
                raise EngineUnavailable(f"cannot start or join {where}: {_one_line(exc)}") from None
            self._started = True

    @property
    def slots(self) -> int:
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def _task_nodes(self) -> list[dict[str, Any]]:
        """The live nodes that can run tasks (a head with 0 CPUs runs none and needs no storage)."""
        return [n for n in self._ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *, label: str,
            cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        ray = self._ray
        if not tasks:
            return
        remote = ray.remote(fn).options(name=label, num_cpus=cpus, max_retries=self.max_retries,
                                        retry_exceptions=False)
        position = {remote.remote(task): i for i, task in enumerate(tasks)}
        pending = list(position)
        lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.OwnerDiedError, ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:  # raised by fn itself: the job's to judge
                        raise exc.as_instanceof_cause() from None
                    except lost as exc:
                        result = TaskLost(f"its worker was lost {self.max_retries + 1} times ({_one_line(exc)})")
                    yield position[ref], result
        finally:
            # Interrupted, failed or abandoned: stop the tasks still running, so that none writes into
            # the dataset after the driver has released its lock.
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def check_shared(self, paths: Sequence[Path]) -> None:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        paths = [Path(p).absolute() for p in paths]
        folder = paths[0]  # the dataset: the folder the nodes write to
        token = secrets.token_hex(8)
        probe = folder / f".probe-{token}.tmp"
        probe.write_text(token)
        nodes = self._task_nodes()
        try:
            refs = {}
            for node in nodes:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                task = ray.remote(_probe).options(name="framesim-probe", num_cpus=0, scheduling_strategy=strategy,
                                                  max_retries=0)
                refs[task.remote([str(p) for p in paths], str(probe), token, node["NodeID"][:8])] = node
            ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_TIMEOUT)
            problems = [f"node {_node_name(refs[ref])} did not answer the storage probe in {PROBE_TIMEOUT:.0f} s"
                        for ref in late]
            gone = (ray.exceptions.TaskUnschedulableError, ray.exceptions.NodeDiedError,
                    ray.exceptions.WorkerCrashedError, ray.exceptions.LocalRayletDiedError)
            for ref in ready:
                node = refs[ref]
                try:
                    found = ray.get(ref)
                except gone:  # the node died just now, before the cluster said so: it runs no task of ours
                    continue
                except Exception as exc:  # noqa: BLE001 - any other failure of the probe is the node's problem
                    found = [f"probe failed ({_one_line(exc)})"]
                reply = folder / f".probe-{token}-{node['NodeID'][:8]}.tmp"
                if not found and not reply.exists():
                    found = [f"writes to {folder} do not reach this machine (not the same storage)"]
                problems += [f"node {_node_name(node)} {what}" for what in found]
                reply.unlink(missing_ok=True)
            if problems:
                raise SharedStorageError(
                    f"{problems[0]}{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; videos "
                    "and the dataset must be on storage every node mounts at the same path (NFS or similar)")
        finally:
            probe.unlink(missing_ok=True)
            for reply in folder.glob(f".probe-{token}-*.tmp"):
                reply.unlink(missing_ok=True)

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nothing answers at: Ray itself keeps retrying for minutes."""
    if address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    host, _, port = rest.rstrip("/").rpartition(":")
    if not host:
        host, port = rest.rstrip("/"), "10001" if scheme == "ray" else "6379"  # Ray's default ports
    if not host or not port.isdigit():
        raise EngineUnavailable(f"--ray-address {address!r}: expected HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise EngineUnavailable(f"cannot reach the Ray cluster at {address}: "
                                f"{(exc.strerror or str(exc) or 'timed out').lower()}") from None


def _node_name(node: dict[str, Any]) -> str:
    return f"{node.get('NodeManagerAddress', '?')} (id {str(node.get('NodeID', ''))[:8]})"


def _probe(paths: list[str], probe: str, token: str, node: str) -> list[str]:
    """On one node: which of ``paths`` it cannot see, and whether it reads the driver's token file."""
    problems = [f"cannot see {p}" for p in paths if not os.path.exists(p)]
    try:
        if Path(probe).read_text() != token:
            problems.append(f"sees another {Path(probe).parent} (not the same storage)")
    except OSError as exc:
        problems.append(f"cannot read {probe} ({exc.strerror or exc}): not the same storage")
    if not problems:
        try:
            Path(probe).with_name(f".probe-{token}-{node}.tmp").write_text(node)
        except OSError as exc:
            problems.append(f"cannot write to {Path(probe).parent} ({exc.strerror or exc})")
    return problems
