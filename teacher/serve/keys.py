"""``gemma-teacher keys``: CurveZMQ key pairs for the teacher and its allow-list of edges.

    <keys_dir>/teacher.key, teacher.key_secret      the teacher's key pair (keys init)
    <keys_dir>/edges/NAME.key                       an allowed edge's public key
    <keys_dir>/edges/NAME.key_secret                its secret key: copy it to the edge
    <keys_dir>/revoked/NAME.key                     a revoked edge (no longer allowed)

The allow-list *is* the set of ``edges/*.key`` files; the server re-reads it when the
folder changes, so ``new-edge`` and ``revoke`` take effect without a restart. An edge
authenticates as NAME: it may only escalate under ``edge_id: NAME``.

It knows nothing about sockets beyond loading and creating key files.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from shared.config import load_config
from shared.errors import LinkError
from shared.teacher_config import TeacherConfig

logger = logging.getLogger(__name__)
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def teacher_keypair(keys_dir: Path) -> tuple[bytes, bytes]:
    """The teacher's (public, secret) key, z85-encoded; LinkError if missing."""
    path = Path(keys_dir) / "teacher.key_secret"
    if not path.is_file():
        raise LinkError(f"no teacher key pair in {keys_dir}: run `gemma-teacher keys init` first")
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise LinkError(f"{path} holds no secret key")
    return public, secret


def load_public_key(path: Path) -> bytes:
    """A z85 public key from a ``.key`` or ``.key_secret`` file; LinkError names the file."""
    try:
        public, _ = zmq.auth.load_certificate(Path(path))
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot read public key {path}: {exc}") from None
    return public


def load_secret_keypair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; LinkError names the file."""
    try:
        public, secret = zmq.auth.load_certificate(Path(path))
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot read secret key {path}: {exc}") from None
    if secret is None:
        raise LinkError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


def init_keys(keys_dir: Path, force: bool = False) -> Path:
    keys_dir = Path(keys_dir)
    if (keys_dir / "teacher.key_secret").exists() and not force:
        raise LinkError(f"{keys_dir} already has a teacher key pair (use --force to replace it)")
    keys_dir.mkdir(parents=True, exist_ok=True)
    (keys_dir / "edges").mkdir(exist_ok=True)
    public, secret = zmq.auth.create_certificates(keys_dir, "teacher")
    os.chmod(secret, 0o600)
    return Path(public)


def new_edge(keys_dir: Path, name: str) -> tuple[Path, Path]:
    """Write NAME's key pair under edges/ (which allows it); returns (public, secret) files."""
    if not NAME.match(name):
        raise LinkError(f"edge name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    edges = Path(keys_dir) / "edges"
    if (edges / f"{name}.key").exists():
        raise LinkError(f"edge {name!r} already has keys in {edges}")
    edges.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(edges, name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def revoke_edge(keys_dir: Path, name: str) -> Path:
    source = Path(keys_dir) / "edges" / f"{name}.key"
    if not source.is_file():
        raise LinkError(f"no allowed edge {name!r} in {source.parent}")
    revoked = Path(keys_dir) / "revoked"
    revoked.mkdir(exist_ok=True)
    target = revoked / f"{name}.key"
    source.replace(target)
    secret = source.with_suffix(".key_secret")
    if secret.exists():
        secret.replace(revoked / secret.name)
    return target


class AllowList:
    """Edge public keys allowed to connect, re-read when ``edges/`` changes.

    Implements pyzmq's credentials-provider ``callback(domain, key)`` for the ZAP
    authenticator, and maps a key to its edge name for the CURVE User-Id.
    """

    def __init__(self, keys_dir: Path):
        self.dir = Path(keys_dir) / "edges"
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._names: dict[bytes, str] = {}
        self._warned: dict[bytes, float] = {}

    def _refresh(self) -> None:
        try:
            st = self.dir.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = (0, 0)
        if stamp == self._stamp:
            return
        names = {}
        for path in sorted(self.dir.glob("*.key")) if self.dir.is_dir() else []:
            try:
                names[load_public_key(path)] = path.stem
            except LinkError as exc:
                logger.warning("skipping unreadable edge key: %s", exc)
        self._names, self._stamp = names, stamp

    def name(self, z85_key: bytes) -> str | None:
        with self._lock:
            self._refresh()
            return self._names.get(z85_key)

    def entries(self) -> list[tuple[str, bytes]]:
        """(edge name, z85 public key) of every allowed edge, by name."""
        with self._lock:
            self._refresh()
            return sorted((name, key) for key, name in self._names.items())

    def callback(self, domain: str, key: bytes) -> bool:
        name = self.name(key)
        if name is None:
            now = time.monotonic()
            if len(self._warned) > 10_000:
                self._warned.clear()
            if now - self._warned.get(key, -3600.0) > 60:  # it retries: say so once a minute
                self._warned[key] = now
                logger.warning("refused an edge with an unknown key %s", key.decode()[:12])
            return False
        logger.info("edge %s authenticated", name)
        return True


class EdgeAuthenticator(ThreadAuthenticator):
    """ZAP handler whose User-Id for a CURVE client is its edge name on the allow-list."""

    def __init__(self, context: zmq.Context, allow: AllowList):
        super().__init__(context)
        self.allow = allow

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.allow.name(zmq.utils.z85.encode(client_public_key)) or ""


# ---------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, None)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # accepted after the action too
    init = sub.add_parser("init", parents=[common], help="create the teacher's key pair")
    init.add_argument("--force", action="store_true", help="replace an existing key pair")
    edge = sub.add_parser(
        "new-edge", parents=[common], help="create and allow a key pair for edge NAME"
    )
    edge.add_argument("name", help="the edge's name (its edge_id)")
    sub.add_parser("list", parents=[common], help="list the teacher key and the allowed edges")
    revoke = sub.add_parser("revoke", parents=[common], help="remove edge NAME from the allow-list")
    revoke.add_argument("name")


def _common(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--config", default=default, help="teacher YAML (for server.keys_dir)")
    parser.add_argument("--keys-dir", type=Path, default=default, help="override server.keys_dir")


def run(args: argparse.Namespace) -> int:
    keys_dir = args.keys_dir or load_config(args.config, TeacherConfig).server.keys_dir
    if args.action == "init":
        public = init_keys(keys_dir, args.force)
        print(f"teacher key pair written; give edges this public key file: {public}")
    elif args.action == "new-edge":
        public, secret = new_edge(keys_dir, args.name)
        print(f"edge {args.name} allowed ({public})")
        print(f"copy to the edge: {secret} (link.edge_secret_key)")
        print(f"             and: {Path(keys_dir) / 'teacher.key'} (link.teacher_public_key)")
    elif args.action == "revoke":
        print(f"edge {args.name} revoked ({revoke_edge(keys_dir, args.name)})")
    else:
        teacher = Path(keys_dir) / "teacher.key"
        status = load_public_key(teacher).decode() if teacher.exists() else "(none: keys init)"
        print(f"teacher  {status}")
        for name, key in AllowList(keys_dir).entries():
            print(f"{name:<24} {key.decode()}")
    return 0
