"""``framesim serve``: the web page and JSON API over a dataset's collections (framesim/server/CONTRACT.md).

Kept apart from ``cli.py``; registered on the same group. FastAPI and uvicorn (the serve extra) are
imported only when the command runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from framesim.cli import EXIT_FATAL, _fatal, _fatal_error, _parse_weights, runtime_option
from framesim.cli_collections import _store_errors, dataset_option, store_option, weights_option


@click.command("serve")
@dataset_option
@click.option("-b", "--backbone", "backbones", multiple=True,
              help="Backbone spec NAME[:DESCRIPTOR] to search with; repeat for several (the first is the "
                   "default) [default: efficientnet-lite0].")
@store_option
@weights_option
@runtime_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but a loopback address needs --token.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token", default=None, envvar="FRAMESIM_TOKEN",
              help="Require this token (Authorization: Bearer TOKEN, or open /login?token=TOKEN once). "
                   "Also $FRAMESIM_TOKEN, which other users cannot read as they can a command line.")
@click.option("--video-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Also look for each video by its file name in this folder.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True, max=4096), default=20.0,
              show_default=True, help="Largest image upload.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=50_000_000, show_default=True,
              help="Largest image (width x height, read from its header before decoding).")
@click.option("--max-waiting", type=click.IntRange(min=0), default=8, show_default=True,
              help="Searches that may wait for a worker; more get 503 (retry after 1 s).")
def serve_cmd(dataset: Path, backbones: tuple[str, ...], store: str | None, weights: tuple[str, ...], runtime: str,
              host: str, port: int, token: str | None, video_root: Path | None, max_upload_mb: float,
              max_pixels: int, max_waiting: int) -> None:
    """Search a dataset's collections from a web page: drop a picture, see where it appears.

    Opens the collections of `framesim index` (one per -b; a backbone without one gets a temporary
    collection built at start) and serves http://HOST:PORT/. Searches only read the dataset.
    """
    from framesim.matching import DEFAULT_BACKBONE
    from framesim.server.safety import is_loopback

    if token is not None and not token.strip():
        _fatal("--token: the token is empty")
    if token is None and not is_loopback(host):
        _fatal(f"--host {host} is not a loopback address: anyone who reaches it could search and download the "
               "dataset; add --token TOKEN (or set FRAMESIM_TOKEN)")
    _check_port(host, port)  # before the models load: a busy port should fail at once, in one line
    try:
        import uvicorn

        from framesim.server import ServerConfig, create_app
    except ImportError as exc:
        _fatal(f"framesim serve needs {exc.name}, which is missing: reinstall framesim (pip install .)")
        return
    specs = tuple(dict.fromkeys(backbones or (DEFAULT_BACKBONE,)))
    config = ServerConfig(dataset=dataset, backbones=specs, store=store, weights=_parse_weights(weights, specs),
                          runtime=runtime, token=token, host=host, video_root=video_root,
                          max_upload_mb=max_upload_mb, max_pixels=max_pixels, max_waiting=max_waiting,
                          on_note=lambda msg: click.echo(f"note: {msg}", err=True))
    try:
        app = create_app(config)
    except _store_errors() as exc:  # StoreError and StoreLockedError are ValueErrors: one line each
        _fatal_error(exc)
        return
    state = app.state.framesim
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    playable = sum(v["playable"] for v in state.video_stats)
    click.echo(f"framesim serve: {len(state.frames)} frames, {len(state.video_stats)} videos ({playable} playable), "
               f"backbones {', '.join(state.served)}")
    click.echo(f"open {url}login?token={token}" if token else f"open {url}")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start (it printed why): our code for that is 2
        if exc.code not in (0, None):
            sys.exit(EXIT_FATAL)
    finally:
        state.close()  # (uvicorn's shutdown closed them already unless it never started)


def _check_port(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        _fatal(f"--host {host}: {exc.strerror}")
        return
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no obstacle
        try:
            sock.bind(address)
        except OSError as exc:
            _fatal(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})")


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
