"""``gemma-teacher console``: the review console, a web page served by the teacher box.

    gemma-teacher console --config teacher.yaml            # http://127.0.0.1:8765/
    gemma-teacher console --config teacher.yaml --port 9000

It reads the same store and release registry as ``gemma-teacher serve`` and runs beside
it. It binds to ``console.host`` (127.0.0.1 by default); any other address needs
``console.token`` or the start fails with one line and exit status 2, as does a port
already taken or a home without a store. The URL is printed once the socket listens.
Behind a TLS reverse proxy on the same box, ``X-Forwarded-Proto`` from 127.0.0.1 is
honoured (the session cookie is then marked Secure). SIGINT/SIGTERM stop it cleanly.
It knows nothing about what the pages show.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from shared.errors import ConfigError
from shared.teacher_config import load_teacher_config

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="teacher YAML file (default: all defaults)")
    parser.add_argument("--home", type=Path, help="override home (store and releases)")
    parser.add_argument("--host", help="override console.host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="override console.port (default 8765; 0: any)")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; ConfigError (one line) if it cannot bind."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        raise ConfigError(
            "console", [("console.host/port", f"{host}:{port}", f"cannot listen: {exc}")]
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from teacher.console.app import create_app, open_console
    except ImportError as exc:  # the console's web libraries are missing
        raise ConfigError(
            "console", [("dependencies", exc.name, "not installed: pip install -e .")]
        ) from exc

    config = load_teacher_config(args.config, args.home)
    if args.host:
        config.console.host = args.host
    if args.port is not None:
        config.console.port = args.port
    console = open_console(config)
    app = create_app(console)
    sock = listen(config.console.host, config.console.port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=5,
        )
    )
    how = (
        "sign in with console.token"
        if console.sessions.token
        else f"loopback only, no sign-in (decisions recorded as {console.sessions.default_name()!r})"
    )
    print(
        f"gemma-teacher console on {url_of(sock)} ({how}; store {console.store.path})", flush=True
    )
    try:
        server.run(sockets=[sock])
    finally:
        console.store.close()
        sock.close()
    return 0
