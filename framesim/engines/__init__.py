"""Execution engines for framesim's per-video (extract) and per-shard (embed) tasks; see ``base``."""

from framesim.engines.base import (
    ENGINES,
    Engine,
    EngineUnavailable,
    LocalEngine,
    SharedStorageError,
    TaskLost,
    engine_session,
    get_engine,
    register_engine,
)

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "LocalEngine", "SharedStorageError", "TaskLost",
           "engine_session", "get_engine", "register_engine"]
