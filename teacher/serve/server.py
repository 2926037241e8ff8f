"""``gemma-teacher serve``: the teacher's link server, a ROUTER socket in front of the store.

One thread owns the socket. Each turn it takes every waiting message (up to
``server.commit_batch``), stores all escalations in ONE SQLite transaction and only
after the commit acknowledges each case id (a duplicate id is acknowledged again,
``duplicate: true``, and not stored twice). Batching the commit is what makes it fast:
one fsync per batch, not per case.

Besides escalations it
- stores the inputs edges settled themselves (``Settled``) apart, and acks them the same;
- answers every edge heartbeat, remembers which edges are connected, what release
  they run and whether its head is live (``teacher.serve.fleet``), and pushes the ACTIVE release
  (``teacher.release.build``) to an edge that reports a different one, as one message (so
  a rollback is pushed too); an edge too old to take release pushes is told which
  version it needs;
- sends stored reviews not yet at their edge (reviews for an absent edge wait for it);
- answers malformed, oversized, unknown-type or wrong-version messages with an
  ErrorReply and a log line; nothing is stored for them.

With CurveZMQ on (the default) a ZAP authenticator admits only keys on the
allow-list (``teacher.serve.keys``); the edge's key name is its identity, and an
escalation claiming another ``edge_id`` is refused. It knows nothing about models.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

import zmq

from shared.errors import ConfigError, LinkError, MessageError, StoreError
from shared.messages import (
    EDGE_TOO_OLD,
    Ack,
    ErrorReply,
    Escalation,
    Heartbeat,
    PushResult,
    ReleasePush,
    Settled,
    decode,
    encode,
    error_code,
    peek_case_id,
    peek_type,
)
from shared.release import default_release_dir
from shared.release import payload as release_payload
from shared.teacher_config import TeacherConfig
from teacher.data.store import CaseStore, default_store_path
from teacher.release.registry import ReleaseRegistry
from teacher.serve.fleet import EdgeState, Fleet
from teacher.serve.keys import AllowList, EdgeAuthenticator, teacher_keypair
from teacher.serve.review import Reviewer, ReviewWorker, Serialised

logger = logging.getLogger(__name__)

ZAP_DOMAIN = b"gemma-edge"


class TeacherServer:
    def __init__(
        self,
        config: TeacherConfig,
        reviewer: Reviewer | None = None,
        store: CaseStore | None = None,
    ):
        self.config = config
        self.store = store or CaseStore(default_store_path(config.home))
        self.reviewer = reviewer
        self.releases = ReleaseRegistry.of(config)
        self.edges = Fleet()
        self.endpoint: str | None = None
        self.ready = threading.Event()
        self.on_ready: Callable[[], None] | None = None
        self.stats = {"stored": 0, "duplicates": 0, "errors": 0, "reviews_sent": 0}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread: threading.Thread | None = None
        self._active_cache: tuple[float, int, float] = (float("-inf"), 0, 0.0)
        self._review_lock = threading.Lock()
        self._workers: list[ReviewWorker] = []

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Serve on a background thread; returns once the socket is bound."""
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                self.serve_forever()
            except BaseException as exc:  # handed to the caller of start()
                errors.append(exc)
                self.ready.set()

        self._thread = threading.Thread(target=serve, name="teacher", daemon=True)
        self._thread.start()
        self.ready.wait(10)
        if errors:
            raise errors[0]

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def serve_forever(self) -> None:
        """Bind and serve until ``stop``; LinkError if keys are missing or bind fails."""
        cfg = self.config.server
        keys = None if cfg.insecure else teacher_keypair(cfg.keys_dir)
        release = self.releases.ensure()  # an old home's skill and adapter: migrated once
        logger.info("edges get %s", release.describe())
        ctx = zmq.Context()
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        sock.linger = 0
        sock.router_mandatory = 1
        sock.sndhwm = sock.rcvhwm = 100_000
        sock.maxmsgsize = cfg.max_message_bytes + 2**16
        try:
            if keys is not None:
                allow = AllowList(cfg.keys_dir)
                auth = EdgeAuthenticator(ctx, allow)
                auth.start()
                auth.configure_curve_callback(ZAP_DOMAIN.decode(), credentials_provider=allow)
                sock.curve_server = True
                sock.curve_publickey, sock.curve_secretkey = keys
                sock.zap_domain = ZAP_DOMAIN
                logger.info("CurveZMQ on; %s edge(s) allowed", len(allow.entries()))
            else:
                logger.warning("server.insecure: plain-text ZeroMQ, any edge may connect")
            try:
                sock.bind(cfg.bind)
            except zmq.ZMQError as exc:
                raise LinkError(f"server.bind {cfg.bind!r}: cannot bind: {exc}") from None
            self.endpoint = sock.last_endpoint.decode()
            self._start_workers()
            self.ready.set()
            if self.on_ready is not None:
                self.on_ready()
            logger.info("serving on %s, store %s", self.endpoint, self.store.path)
            self._loop(sock)
        finally:
            logger.info("stopping: %s", ", ".join(f"{k} {v}" for k, v in self.stats.items()))
            for worker in self._workers:
                worker.stop()
            sock.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()

    def _start_workers(self) -> None:
        if self.reviewer is None:
            return
        rc = self.config.reviewer
        for i in range(rc.workers):
            worker = ReviewWorker(
                self.store,
                Serialised(self.reviewer, self._review_lock),
                lambda _reviews: self._wake(),
                batch_size=rc.batch_size,
                name=f"review-{i}",
            )
            worker.start()
            self._workers.append(worker)

    # ------------------------------------------------------------ the loop
    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_reviews = 0.0
        while not self._stop.is_set():
            events = dict(poller.poll(200))
            if sock in events:
                self._turn(sock)
            now = time.monotonic()
            if self._wake_r in events or now >= next_reviews:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                self._send_reviews(sock)
                self.edges.forget_silent(self.config.server.edge_timeout_s)
                next_reviews = now + 1.0

    def _turn(self, sock: zmq.Socket) -> None:
        batch: list[tuple[bytes, Escalation, bytes | None]] = []
        for _ in range(self.config.server.commit_batch):
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                item = self._handle(sock, frames)
            except Exception:
                logger.exception("failed to handle a message; going on")
                continue
            if item is not None:
                batch.append(item)
        settled = [item for item in batch if isinstance(item[1], Settled)]
        batch = [item for item in batch if not isinstance(item[1], Settled)]
        if settled:  # kept apart from the cases: never reviewed, read by train as self-labels
            try:
                fresh = self.store.add_settled([msg for _, msg, _ in settled])
            except (StoreError, sqlite3.Error) as exc:
                logger.error("store failed, %s settled input(s) not acked: %s", len(settled), exc)
                fresh = []
            for (identity, msg, _), new in zip(settled, fresh, strict=False):
                self._reply(sock, identity, Ack(case_id=msg.case_id, duplicate=not new))
        if not batch:
            return
        try:
            fresh = self.store.add_cases([(esc, frame) for _, esc, frame in batch])
        except StoreError as exc:
            logger.error("store failed, %s case(s) not acknowledged: %s", len(batch), exc)
            return
        for (identity, esc, _), new in zip(batch, fresh, strict=True):
            self._reply(sock, identity, Ack(case_id=esc.case_id, duplicate=not new))
        n_new = sum(fresh)
        self.stats["stored"] += n_new
        self.stats["duplicates"] += len(fresh) - n_new

    def _handle(
        self, sock: zmq.Socket, raw: list[zmq.Frame]
    ) -> tuple[bytes, Escalation, bytes | None] | None:
        identity = raw[0].bytes
        frames = [f.bytes for f in raw[1:]]
        user = None
        if not self.config.server.insecure and len(raw) > 1:
            try:
                user = raw[1].get("User-Id")
            except zmq.ZMQError:
                user = ""
            if not user:  # its key left the allow-list after it connected
                detail = "unknown edge key"
                self._reply(sock, identity, ErrorReply(code="rejected", detail=detail))
                return None
        try:
            msg, payloads = decode(frames, self.config.server.max_message_bytes)
        except MessageError as exc:
            self.stats["errors"] += 1
            logger.warning("bad message from edge %s: %s", user or identity.hex(), exc)
            if peek_type(frames) != "error":
                code = error_code(exc)
                case_id = peek_case_id(frames) if code in ("malformed", "too_large") else None
                self._reply(
                    sock, identity, ErrorReply(code=code, detail=str(exc)[:4000], case_id=case_id)
                )
            return None
        if isinstance(msg, (Escalation, Settled)):
            if user is not None and msg.edge_id != user:
                detail = f"edge {user!r} may not send cases as {msg.edge_id!r}"
                logger.warning("refused case %s: %s", msg.case_id, detail)
                self._reply(
                    sock, identity, ErrorReply(code="rejected", detail=detail, case_id=msg.case_id)
                )
                return None
            self.edges.seen(user or msg.edge_id, identity)
            return identity, msg, payloads[0] if payloads else None
        if isinstance(msg, Heartbeat):
            edge = self.edges.seen(user or msg.sender, identity)
            edge.release_version = msg.release_version
            if msg.head_live is False and edge.head_live is not False:
                logger.warning(
                    "edge %s runs release v%d WITHOUT its safety head: the "
                    "certified thresholds do not decide there",
                    user or msg.sender,
                    msg.release_version,
                )
            edge.head_live = msg.head_live
            try:
                self.store.record_edge(
                    user or msg.sender, msg.release_version, msg.head_live, msg.outbox_depth
                )
                self.store.record_counts(user or msg.sender, msg.boot, msg.inputs)
            except sqlite3.Error as exc:
                logger.error("input counts of edge %s not stored: %s", user or msg.sender, exc)
            edge.outbox_depth = msg.outbox_depth
            self._reply(sock, identity, Heartbeat(sender="teacher"))
            self._maybe_push(sock, user or msg.sender, edge)
        elif isinstance(msg, PushResult):
            user = user or self.edges.name_of(identity)
            level = logging.INFO if msg.accepted else logging.WARNING
            logger.log(
                level,
                "edge %s %s %s v%s %s",
                user or identity.hex(),
                "installed" if msg.accepted else "refused",
                msg.kind,
                msg.version,
                msg.reason,
            )
            if msg.kind == "release":
                self._record_push(user, msg.version, msg.accepted, msg.reason)
        elif isinstance(msg, ErrorReply):
            user = user or self.edges.name_of(identity)
            logger.warning("edge %s reports %s: %s", user, msg.code, msg.detail)
            if msg.code == "unknown_type" and "release_push" in msg.detail:
                logger.error("edge %s is too old for this teacher: %s", user, EDGE_TOO_OLD)
                self._reply(sock, identity, ErrorReply(code="bad_version", detail=EDGE_TOO_OLD))
        else:
            self._reply(
                sock,
                identity,
                ErrorReply(code="rejected", detail=f"the teacher does not accept {msg.type}"),
            )
        return None

    def _reply(self, sock: zmq.Socket, identity: bytes, msg, payloads: list[bytes] = ()) -> bool:
        try:
            sock.send_multipart([identity, *encode(msg, payloads)], flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False
            raise

    # ------------------------------------------------------------ edges, pushes, reviews
    def _active(self) -> tuple[int, float]:
        """The active release's number and when a re-push was last asked for (``time.time()``;
        ``ReleaseRegistry.request_push``), read at most once a second."""
        at, number, asked = self._active_cache
        if time.monotonic() - at > 1.0:
            number = self.releases.active_number() or 0
            asked = self.releases.push_requested_at()
            self._active_cache = (time.monotonic(), number, asked)
        return number, asked

    def _maybe_push(self, sock: zmq.Socket, name: str, edge: EdgeState) -> None:
        number, asked = self._active()
        if not edge.push_due(number, asked, self.config.server.push_retry_s):
            return
        folder = self.releases.path(number) if number else default_release_dir(self.releases.engine)
        try:
            files = release_payload(folder)
        except (OSError, ConfigError) as exc:
            logger.error("release v%s cannot be pushed: %s", number, exc)
            return
        msg = ReleasePush(version=number, files=[e for e, _ in files])
        if self._reply(sock, edge.identity, msg, [data for _, data in files]):
            edge.was_pushed(number)
            self._record_push(name, number, None, "")
            logger.info(
                "pushed release v%s to edge %s (it runs v%s)", number, name, edge.release_version
            )

    def _record_push(self, name: str, version: int, accepted: bool | None, reason: str) -> None:
        last = self.edges.get(name)
        pushed = last.pushed.get("release") if last else None
        doc = {
            "version": version,
            "pushed_at": pushed[2] if pushed else None,
            "accepted": accepted,
            "reason": reason,
        }
        try:
            self.store.record_push(name, doc)
        except sqlite3.Error as exc:
            logger.error("push result of edge %s not stored: %s", name, exc)

    def _send_reviews(self, sock: zmq.Socket) -> None:
        """The teacher's reviews, then a person's corrections, not yet at their edges."""
        if not self.edges:
            return
        for unsent, mark in (
            (self.store.unsent_reviews, self.store.mark_reviews_sent),
            (self.store.unsent_corrections, self.store.mark_corrections_sent),
        ):
            sent = []
            for edge_id, review in unsent(list(self.edges), limit=1000):
                edge = self.edges.get(edge_id)
                if edge is None or not self._reply(sock, edge.identity, review):
                    continue
                sent.append(review.case_id)
            if sent:
                mark(sent)
                self.stats["reviews_sent"] += len(sent)
