"""``framesim serve``: a web page and JSON API over a dataset's collections (see CONTRACT.md).

Imports FastAPI only when used: ``framesim --help`` and the other commands do not need the serve extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framesim.server.app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from framesim.server import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
