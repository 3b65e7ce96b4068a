"""Where framesim's per-video and per-shard tasks run: the ``Engine`` base, the local engine, the registry.

An engine runs a plain function over a list of task descriptions and hands back each result as it
arrives, tagged with the task's position. Jobs (``extract_job``, ``embed_job``) cut the work into
tasks whose outputs are named by that position, so the result on disk does not depend on which
engine ran them or in which order they finished. framesim has no scheduler of its own: the local
engine is a loop in this process, the Ray engine (``framesim.engines.ray_engine``) hands the same
tasks to a Ray cluster.
"""

from __future__ import annotations

import abc
import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class EngineUnavailable(RuntimeError):
    """The engine cannot be used here (not installed, cluster unreachable): a one-line reason."""


class SharedStorageError(RuntimeError):
    """A node of the cluster cannot see the videos or the dataset at the driver's paths."""


@dataclass(frozen=True)
class TaskLost:
    """A task that did not finish because its worker (or node) died more often than it was retried."""

    reason: str


class Progress:
    """One progress bar on the driver: tasks done, items per second (frames, images), ETA by tasks."""

    def __init__(self, total: int, desc: str, unit: str, items: str, enabled: bool) -> None:
        from tqdm import tqdm

        self.items, self.count, self.started = items, 0, time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
                        dynamic_ncols=True)

    def done(self, items: int) -> None:
        self.count += items
        rate = self.count / max(time.monotonic() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.count} {self.items}, {rate:.1f} {self.items}/s", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class Engine(abc.ABC):
    """Runs ``fn(task)`` for each task; see the module docstring."""

    name: str = ""
    #: True when tasks run in other processes or on other machines (their arguments are pickled)
    distributed: bool = False

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *, label: str,
            cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        """``(position, fn(tasks[position]))`` for every task, in the order they finish.

        ``fn`` must be a module-level function and tasks plain picklable data. An exception raised by
        ``fn`` is raised here (the job decides what it means); a task whose worker was lost more times
        than it is retried gives a ``TaskLost`` instead of a result, and the others go on. ``label``
        names the tasks (Ray shows it as the task name); ``cpus``: what one task needs.
        """

    def check_shared(self, paths: Sequence[Path]) -> None:
        """Raise SharedStorageError unless every node that runs tasks sees ``paths`` as this process does."""
        return None  # one machine: nothing to check

    @property
    def slots(self) -> int:
        """How many tasks run at once."""
        return 1

    def close(self) -> None:
        """Release what the engine started (a local Ray instance); a cluster it joined keeps running."""
        return None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalEngine(Engine):
    """Tasks one after another in this process: no pickling, exceptions as they are, nothing started."""

    name = "local"

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any], *, label: str,
            cpus: float = 1.0) -> Iterator[tuple[int, Any]]:
        for position, task in enumerate(tasks):
            yield position, fn(task)


ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    """Make ``get_engine(name, **options)`` call ``factory(**options)``."""
    ENGINES[name] = factory


def _ray_engine(**options: Any) -> Engine:
    from framesim.engines.ray_engine import RayEngine  # imports Ray only when asked for

    return RayEngine(**options)


register_engine("local", lambda **options: LocalEngine())
register_engine("ray", _ray_engine)


def get_engine(engine: str | Engine | None = "local", *, address: str | None = None) -> Engine:
    """The engine called ``engine`` (``"local"``, ``"ray"``); an Engine is returned as it is.

    ``address``: the Ray cluster to join (``HOST:PORT`` or ``ray://HOST:10001``); without it
    ``$RAY_ADDRESS``, else a Ray instance on this machine is started for the run.
    """
    if isinstance(engine, Engine):
        return engine
    name = engine or "local"
    factory = ENGINES.get(name)
    if factory is None:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")
    if name == "local":
        if address:
            raise ValueError("--ray-address needs --engine ray")
        return factory()
    return factory(address=address)


@contextlib.contextmanager
def engine_session(engine: str | Engine | None = "local", *, address: str | None = None) -> Iterator[Engine]:
    """``get_engine(engine, address=...)`` for a ``with`` block, closed after it if it was made here
    (an Engine passed in stays open: its owner closes it)."""
    runner = get_engine(engine, address=address)
    try:
        yield runner
    finally:
        if runner is not engine:
            runner.close()
