"""The edge's link to the teacher box: a DEALER socket that drains the outbox.

``escalate`` writes the case to the durable outbox and returns; it never touches the
network, so the edge keeps answering locally whatever the link does. One background
thread owns the socket and does everything else:

- sends queued cases in outbox order, up to ``WINDOW`` unacknowledged at once, and
  deletes each one when the teacher acknowledges its case id (the teacher acks only
  after its store committed the case);
- heartbeats every ``heartbeat_s`` with the release the daemon runs (and whether its
  safety head is live) and the outbox depth; the teacher answers each heartbeat;
- Paranoid Pirate: if the teacher is silent for ``timeout_s`` the socket is closed
  and reopened after a back-off that doubles up to ``reconnect_max_s``; every
  unacknowledged case is sent again after a reconnect or when its ack is overdue
  (the teacher ignores duplicates, so retries are safe);
- receives reviews (``on_review``) and release pushes, which ``edge.updates`` verifies
  whole and installs atomically before ``on_release`` runs and a PushResult goes back;
  a refused push leaves the old release active;
- answers anything malformed or oversized with an ErrorReply and a log line.

CurveZMQ authenticates both ends (``insecure: true`` turns it off for local tests).
It knows nothing about models, the policy or the daemon's loop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import zmq
import zmq.auth

from edge import updates
from edge.outbox import Outbox
from shared.config import LinkConfig
from shared.errors import LinkError, MessageError, PushRejected
from shared.messages import (
    Ack,
    ErrorReply,
    Escalation,
    Heartbeat,
    PushResult,
    ReleasePush,
    Review,
    Settled,
    decode,
    encode,
    error_code,
    peek_type,
)
from shared.release import Release

logger = logging.getLogger(__name__)

MAX_COUNTED_RELEASES = 64  # releases whose input counts a heartbeat carries

WINDOW = 1000  # most cases in flight (sent, not yet acknowledged)
DRAIN = 2000  # most incoming messages handled before the loop looks around again
NO_SETTLED = "the teacher does not take settled inputs (older than 0.3.0): %d dropped, no more sent"
PERMANENT = ("malformed", "too_large", "rejected")  # teacher will never accept the case


def _load_keys(config: LinkConfig) -> tuple[bytes, bytes, bytes]:
    if config.edge_secret_key is None or config.teacher_public_key is None:
        raise LinkError(
            "link.edge_secret_key and link.teacher_public_key are needed unless link.insecure"
        )
    try:
        public, secret = zmq.auth.load_certificate(config.edge_secret_key)
        server, _ = zmq.auth.load_certificate(config.teacher_public_key)
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot read the link's CurveZMQ keys: {exc}") from None
    if secret is None:
        raise LinkError(f"{config.edge_secret_key} holds no secret key")
    return public, secret, server


def _row_problem(item) -> str | None:
    """Why an outbox row is not the escalation it claims to be (None: it is)."""
    frames = [item.doc] if item.frame is None else [item.doc, item.frame]
    try:
        msg, _ = decode(frames)
    except MessageError as exc:
        return f"unreadable: {exc}"
    except Exception as exc:  # a row corrupted into another SQLite type
        return f"unreadable: {type(exc).__name__}: {exc}"
    if not isinstance(msg, (Escalation, Settled)):
        return f"holds a {msg.type} message, not an escalation"
    if msg.case_id != item.case_id:
        return f"its document says case {msg.case_id}"
    return None


class LinkClient:
    """Durable, authenticated escalation link of one edge.

    Callbacks (``on_review``, ``on_release``, ``on_ack``) run on the link's own thread:
    keep them short and thread-safe. ``on_release`` runs only after the pushed release
    was verified and installed under ``state_dir``; an exception in a callback is logged
    and does not stop the link. ``prepare_release`` is the exception: it runs before a pushed release
    becomes active, and if it raises, the push is refused with its reason.
    """

    def __init__(
        self,
        config: LinkConfig,
        edge_id: str,
        state_dir: Path,
        on_review: Callable[[Review], None] | None = None,
        on_ack: Callable[[str, bool], None] | None = None,
        on_release: Callable[[Release], None] | None = None,
        prepare_release: Callable[[Release], None] | None = None,
    ):
        self.config = config
        self.edge_id = edge_id
        self.state_dir = Path(state_dir)
        self.on_review = on_review
        self.on_ack = on_ack
        self.on_release = on_release
        self.prepare_release = prepare_release  # may raise: the push is then refused
        self._keys = None if config.insecure or not config.teacher else _load_keys(config)
        self.outbox = Outbox(config.outbox, config.outbox_max)
        # What is installed under state_dir until the daemon says what it runs.
        self.skill_version = self.adapter_version = 0
        self.release_version = 0
        self.head_live: bool | None = None
        self.boot = time.time()
        self.inputs: dict[str, int] = {}  # release -> inputs the daemon answered with it
        self.connected = False  # the teacher answered within timeout_s
        self.takes_settled = True  # until a teacher says it does not know Settled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # ------------------------------------------------------------ daemon side
    def start(self) -> None:
        """Start the link thread and return at once (no-op without a teacher endpoint)."""
        if not self.config.teacher:
            logger.warning("no link.teacher configured: escalations stay in %s", self.outbox.path)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="link", daemon=True)
            self._thread.start()

    def escalate(self, esc: Escalation, frame: bytes | None = None) -> None:
        """Queue a case durably (on disk before this returns); never waits on the network."""
        if esc.edge_id != self.edge_id:
            raise LinkError(f"escalation edge_id {esc.edge_id!r} is not this edge {self.edge_id!r}")
        if not self.config.send_frames:
            frame = None
        elif frame is not None and len(frame) + 2**16 > self.config.max_message_bytes:
            logger.warning(
                "case %s: frame of %s bytes is over link.max_message_bytes; sent without it",
                esc.case_id,
                len(frame),
            )
            frame = None
        if esc.has_frame != (frame is not None):
            esc = esc.model_copy(update={"has_frame": frame is not None})
        self.outbox.put(esc, frame)
        self._wake()

    def settle(self, msg: Settled) -> bool:
        """Queue a settled input like a case (durable, never waits on the network); False
        where the teacher said it does not take them."""
        if not self.takes_settled or not self.config.teacher:
            return False
        self.outbox.put(msg)
        self._wake()
        return True

    def set_versions(
        self,
        skill_version: int,
        adapter_version: int,
        release: int = 0,
        head_live: bool | None = None,
    ) -> None:
        """The versions the daemon runs and whether the release's head is live; reported
        in the next heartbeat."""
        self.skill_version, self.adapter_version = skill_version, adapter_version
        self.release_version = release
        self.head_live = head_live

    def count_input(self, release: int) -> None:
        """One more input answered with ``release`` (reported in heartbeats)."""
        key = str(release)
        counts = {**self.inputs, key: self.inputs.get(key, 0) + 1}
        if len(counts) > MAX_COUNTED_RELEASES:  # the oldest release counted goes first
            counts.pop(next(iter(counts)))
        self.inputs = counts  # replaced whole: the link thread reads it without a lock

    def depth(self) -> int:
        """Cases waiting in the outbox for the teacher's acknowledgement."""
        return self.outbox.depth()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.outbox.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    # ------------------------------------------------------------ link thread
    def _run(self) -> None:
        ctx = zmq.Context()
        delay = 0.5
        try:
            while not self._stop.is_set():
                sock = self._connect(ctx)
                try:
                    heard = self._session(sock)
                except Exception:
                    logger.exception("link session failed; reconnecting")
                    heard = False
                finally:
                    sock.close(linger=0)
                    self.connected = False
                delay = 0.5 if heard else min(delay * 2, self.config.reconnect_max_s)
                self._stop.wait(delay)
        finally:
            ctx.term()

    def _connect(self, ctx: zmq.Context) -> zmq.Socket:
        sock = ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.immediate = 1  # no queueing towards a teacher that is not connected
        sock.sndhwm = WINDOW * 2
        sock.rcvhwm = WINDOW * 4
        sock.maxmsgsize = self.config.max_message_bytes + 2**16
        sock.reconnect_ivl = 200
        sock.reconnect_ivl_max = int(self.config.reconnect_max_s * 1000)
        if self._keys is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self._keys
        sock.connect(self.config.teacher)
        logger.info("connecting to the teacher at %s", self.config.teacher)
        return sock

    def _session(self, sock: zmq.Socket) -> bool:
        """Run one connection until the teacher goes silent; True if it ever answered."""
        cfg = self.config
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        inflight: dict[str, float] = {}  # case id -> when it was (last) sent
        cursor = 0  # highest outbox seq sent in this session
        heard = False
        last_rx = time.monotonic()
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_rx > cfg.timeout_s:
                logger.warning("teacher silent for %.1f s: reconnecting", now - last_rx)
                return heard
            if now >= next_beat:
                self._send(sock, encode(self._heartbeat()))
                next_beat = now + cfg.heartbeat_s
                if inflight and now - min(inflight.values()) > cfg.timeout_s:
                    logger.info("%s acknowledgement(s) overdue: resending", len(inflight))
                    inflight.clear()
                    cursor = 0
            if heard:
                cursor = self._fill(sock, inflight, cursor)
            wait_ms = max(1, int((next_beat - time.monotonic()) * 1000))
            events = dict(poller.poll(wait_ms))
            if self._wake_r in events:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if sock in events:
                acks = self._drain(sock, inflight)
                last_rx = time.monotonic()
                if not heard:
                    logger.info("link to the teacher is up")
                heard = self.connected = True
                if acks:
                    self.outbox.remove([cid for cid, _ in acks])
                    for cid, dup in acks:
                        inflight.pop(cid, None)
                        self._callback(self.on_ack, cid, dup)
        return heard

    def _fill(self, sock: zmq.Socket, inflight: dict[str, float], cursor: int) -> int:
        room = WINDOW - len(inflight)
        if room <= 0:
            return cursor
        now = time.monotonic()
        for item in self.outbox.after(cursor, room):
            problem = _row_problem(item)
            if problem is not None:  # never sent again and again: the dead table keeps it
                self.outbox.bury(item.case_id, f"cannot be sent: {problem}")
                cursor = item.seq
                continue
            frames = [item.doc] if item.frame is None else [item.doc, item.frame]
            if not self._send(sock, frames):
                break
            inflight[item.case_id] = now
            cursor = item.seq
        return cursor

    def _send(self, sock: zmq.Socket, frames: list[bytes]) -> bool:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            sender=self.edge_id,
            skill_version=self.skill_version,
            adapter_version=self.adapter_version,
            release_version=self.release_version,
            head_live=self.head_live,
            boot=self.boot,
            inputs=self.inputs,
            outbox_depth=self.outbox.depth(),
        )

    def _drain(self, sock: zmq.Socket, inflight: dict[str, float]) -> list[tuple[str, bool]]:
        acks: list[tuple[str, bool]] = []
        for _ in range(DRAIN):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg, payloads = decode(frames, self.config.max_message_bytes)
            except MessageError as exc:
                logger.warning("bad message from the teacher: %s", exc)
                if peek_type(frames) != "error":
                    reply = ErrorReply(code=error_code(exc), detail=str(exc)[:4096])
                    self._send(sock, encode(reply))
                continue
            if isinstance(msg, Ack):
                acks.append((msg.case_id, msg.duplicate))
            elif isinstance(msg, Heartbeat):
                pass
            elif isinstance(msg, Review):
                self._callback(self.on_review, msg)
            elif isinstance(msg, ReleasePush):
                self._send(sock, encode(self._install(msg, payloads)))
            elif isinstance(msg, ErrorReply):
                self._on_error(msg, inflight)
            else:
                detail = f"an edge does not accept {msg.type} messages"
                logger.warning("teacher sent %s: refused", msg.type)
                self._send(sock, encode(ErrorReply(code="rejected", detail=detail)))
        return acks

    def _on_error(self, msg: ErrorReply, inflight: dict[str, float]) -> None:
        logger.warning("teacher error %s: %s", msg.code, msg.detail)
        if msg.code == "unknown_type" and "'settled'" in msg.detail and self.takes_settled:
            self.takes_settled = False
            n = self.outbox.drop_settled()
            logger.warning(NO_SETTLED, n)
        if msg.case_id and msg.code in PERMANENT:
            self.outbox.bury(msg.case_id, f"{msg.code}: {msg.detail}")
            inflight.pop(msg.case_id, None)

    def _install(self, msg: ReleasePush, payloads: list[bytes]) -> PushResult:
        try:
            release = updates.install_release(self.state_dir, msg, payloads, self.prepare_release)
            self.release_version = msg.version
            self._callback(self.on_release, release)
        except PushRejected as exc:
            logger.warning("refused release push v%s: %s", msg.version, exc)
            return PushResult(version=msg.version, accepted=False, reason=str(exc))
        except Exception as exc:  # a disk error, or a check that broke: refused, never active
            logger.exception("could not install release v%s", msg.version)
            reason = f"{type(exc).__name__}: {exc}"[:4000]
            return PushResult(version=msg.version, accepted=False, reason=reason)
        return PushResult(version=msg.version, accepted=True)

    def _callback(self, fn: Callable | None, *args) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            logger.exception("link callback %s failed", getattr(fn, "__name__", fn))
