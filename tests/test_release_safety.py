"""Nothing a release, a file or a message holds may blind an edge (issue: release safety).

One test (or a few) per class of failure, with the real parts where the failure lives:
release folders on disk, the edge's ``Student`` and policy, real SQLite outboxes, real
ZeroMQ sockets to a real ``TeacherServer``, real subprocesses for exit codes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge import updates
from edge.canary import check_release
from edge.daemon import EdgeDaemon
from edge.events import EventLog
from edge.link import LinkClient
from edge.outbox import Outbox
from edge.sources import open_source
from shared.calibration import conservative
from shared.config import EdgeConfig, PolicyConfig
from shared.errors import ConfigError, ModelError, PushRejected, StoreError
from shared.evaluation import load_labeled
from shared.head import HEAD_FILE, SafetyHead
from shared.messages import (
    ErrorReply,
    Escalation,
    Heartbeat,
    ReleasePush,
    decode,
    encode,
    file_entry,
    json_depth,
)
from shared.release import MANIFEST, Canary, Manifest, build_files, load_release
from shared.skill import default_skill
from shared.student import Student
from tests.fakes import DANGER, FeatureBackend, ScriptedBackend, hazard_cases

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- helpers
def good_head(layers=(1, 2), dim=8) -> SafetyHead:
    """A head for ``FeatureBackend`` (4 wide, 2 layers): p ~ 1 on DANGER, ~ 0 on calm."""
    return SafetyHead("hidden", layers, np.zeros(dim), np.ones(dim), np.ones(dim), 0.0)


def calibration(lower=0.2, upper=0.999):
    return conservative().model_copy(update={"lower": lower, "upper": upper})


def raw_head_bytes(**tensors) -> bytes:
    """A head file written without ``SafetyHead``'s checks (what an attacker could send)."""
    from safetensors.numpy import save

    base = {"mean": np.zeros(8), "std": np.ones(8), "weight": np.ones(8), "bias": np.zeros(1)}
    base.update(tensors)
    doc = {"kind": "hidden", "layers": list(tensors.pop("layers", [1, 2])), "info": {}}
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in base.items() if k != "layers"}
    return save(arrays, metadata={"head": json.dumps(doc)})


def with_files(files: dict[str, bytes], **replace: bytes) -> dict[str, bytes]:
    """``files`` with some replaced and the manifest's entries rewritten to match."""
    out = {**files, **replace}
    manifest = json.loads(files[MANIFEST])
    manifest["files"] = [
        file_entry(n, d).model_dump() for n, d in sorted(out.items()) if n != MANIFEST
    ]
    out[MANIFEST] = json.dumps(manifest).encode()
    return out


def push_of(files: dict[str, bytes], version: int) -> tuple[ReleasePush, list[bytes]]:
    names = [MANIFEST, *sorted(n for n in files if n != MANIFEST)]
    push = ReleasePush(version=version, files=[file_entry(n, files[n]) for n in names])
    return push, [files[n] for n in names]


def canaries_for(backend, files: dict[str, bytes], cases, tmp_path) -> list[Canary]:
    """What the teacher writes: the harness's answers with the release (teacher code)."""
    from teacher.release.build import pick_canaries
    from teacher.release.harness import evaluate_release

    release = load_release(_write(tmp_path / "harness", files))
    report = evaluate_release(Student(backend, release), cases, PolicyConfig(), progress=False)
    return pick_canaries(report, cases, 6)


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def edge_daemon(tmp_path, backend, link=None) -> EdgeDaemon:
    config = EdgeConfig(state_dir=tmp_path / "state")
    source = open_source(str(_lines(tmp_path / "in.txt", ["calm"])))
    d = EdgeDaemon(config, backend, source, EventLog(tmp_path / "events.jsonl"))
    if link is not None:
        d.attach_link(link)
    return d


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def events(path: Path) -> list[dict]:
    # strict JSON: a bare NaN in a line would fail here
    return [
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
        for line in path.read_text().splitlines()
    ]


# ---------------------------------------------------------------- 1. activation checks
@pytest.mark.parametrize(
    "head, match",
    [
        (dict(weight=[np.nan] + [1.0] * 7), "non-finite"),
        (dict(std=[0.0] * 8), "std has a zero"),
        (dict(mean=[np.inf] * 8), "non-finite"),
        (dict(bias=[np.nan]), "bias"),
        (dict(layers=[-1, -1]), "negative"),
    ],
)
def test_a_head_that_cannot_compute_a_probability_is_refused_and_the_old_release_stays(
    tmp_path, head, match
):
    good = build_files(1, default_skill(), good_head(), calibration())
    assert updates.install_release(tmp_path, *push_of(good, 1)).version == 1
    bad = with_files(build_files(2, default_skill(), good_head(), calibration()),
                     **{HEAD_FILE: raw_head_bytes(**head)})  # fmt: skip
    with pytest.raises(PushRejected, match=match):
        updates.install_release(tmp_path, *push_of(bad, 2))
    assert updates.active_release(tmp_path).version == 1
    assert not (tmp_path / "releases" / "v2").exists()


@pytest.mark.parametrize("lower, upper", [(float("nan"), 1.0), (0.5, 0.2), (-0.1, 1.0), (0, 1.5)])
def test_thresholds_outside_0_1_or_out_of_order_are_refused(tmp_path, lower, upper):
    files = build_files(1, default_skill(), good_head(), calibration())
    manifest = json.loads(files[MANIFEST])
    manifest["calibration"].update(lower=lower, upper=upper)
    files[MANIFEST] = json.dumps(manifest).encode()  # json writes NaN as the bare NaN token
    with pytest.raises(PushRejected, match="manifest.json is not valid"):
        updates.install_release(tmp_path, *push_of(files, 1))


def test_a_head_that_does_not_fit_the_model_is_refused_before_activation(tmp_path):
    backend = FeatureBackend()
    daemon = edge_daemon(tmp_path, backend)
    running = daemon.release
    for head, match in [
        (good_head(dim=12), "takes 12 features"),  # another model's width
        (good_head(layers=(1, 7)), "7 do not exist"),  # layers the model does not have
    ]:
        files = build_files(3, default_skill(), head, calibration())
        with pytest.raises(PushRejected, match=match):
            updates.install_release(tmp_path / "state", *push_of(files, 3), daemon.prepare_release)
        assert daemon.release is running
    assert updates.active_release(tmp_path / "state") is None


def test_canaries_pass_on_the_same_engine_and_refuse_a_head_that_computes_otherwise(tmp_path):
    backend = FeatureBackend()
    cases = hazard_cases(8)
    files = build_files(1, default_skill(), good_head(), calibration())
    canaries = canaries_for(backend, files, cases, tmp_path)
    assert len(canaries) == 6 and sum(c.unsafe for c in canaries) == 3
    assert all(c.p_unsafe is not None for c in canaries)
    daemon = edge_daemon(tmp_path, backend)
    before = daemon.release
    ok = build_files(1, default_skill(), good_head(), calibration(), canaries=canaries)
    assert updates.install_release(tmp_path / "state", *push_of(ok, 1), daemon.prepare_release)
    assert daemon.release is before  # checked, not yet running: the next input switches

    # The same width and layers, but weights that compute something else: only the
    # canaries can tell (the structural checks pass).
    flipped = good_head()
    other = SafetyHead("hidden", (1, 2), flipped.mean, flipped.std, -flipped.weight, 0.0)
    bad = build_files(2, default_skill(), other, calibration(), canaries=canaries)
    with pytest.raises(PushRejected, match="on the teacher") as refused:
        updates.install_release(tmp_path / "state", *push_of(bad, 2), daemon.prepare_release)
    assert "tolerance 0.05" in str(refused.value)
    assert updates.active_release(tmp_path / "state").version == 1
    assert daemon.student.release is before and daemon.student.head is None  # as before


def test_a_canary_hazard_that_would_pass_refuses_the_release(tmp_path):
    backend = FeatureBackend()
    daemon = edge_daemon(tmp_path, backend)
    hazard = Canary(id="h1", input=f"{DANGER} scene", unsafe=True, p_unsafe=None,
                    decision="escalate")  # fmt: skip
    # thresholds that rule out everything below 0.99999: the hazard (p ~ 0.9997) passes
    files = build_files(1, default_skill(), good_head(), calibration(0.99999, 1.0),
                        canaries=[hazard])  # fmt: skip
    with pytest.raises(PushRejected, match="a hazard would pass"):
        updates.install_release(tmp_path / "state", *push_of(files, 1), daemon.prepare_release)


def test_the_teachers_build_writes_canaries_the_edge_accepts(tmp_path):
    from shared.teacher_config import TeacherConfig
    from teacher.release.build import build_release
    from teacher.release.registry import ReleaseRegistry

    cfg = TeacherConfig(home=tmp_path / "teacher")
    cfg.release.canaries = 4
    backend = FeatureBackend()
    built = build_release(cfg, backend, hazard_cases(160), progress=False)
    assert built.version is not None, built.verdict.reasons
    release = ReleaseRegistry(cfg.home).get(built.version)
    canaries = release.manifest.canaries
    assert len(canaries) == 4 and {c.unsafe for c in canaries} == {True, False}
    assert release.manifest.canary_tolerance == cfg.release.canary_tolerance
    daemon = edge_daemon(tmp_path, FeatureBackend())
    assert check_release(daemon.student, release, daemon.config.policy) == []


# ---------------------------------------------------------------- 2. fail safe per input
class NaNBackend(FeatureBackend):
    """Hidden states of NaN on inputs that say "fire": the head gives no probability."""

    def generate(self, request):
        gen = super().generate(request)
        if "fire" in request.input and gen.hidden is not None:
            gen.hidden = [float("nan")] * len(gen.hidden)
        return gen


class RecordingLink:
    def __init__(self, fail: bool = False):
        self.cases: list[Escalation] = []
        self.fail = fail

    def escalate(self, esc, frame=None):
        if self.fail == "crash":
            raise RuntimeError("a bug in the link")
        if self.fail:
            raise StoreError("cannot queue 1 case(s) in outbox.sqlite: database or disk is full")
        self.cases.append(esc)

    def set_versions(self, *args, **kwargs):
        self.head_live = kwargs.get("head_live")

    def count_input(self, release):
        pass

    def depth(self):
        return len(self.cases)


def _release_for_feature_backend(tmp_path):
    files = build_files(1, default_skill(), good_head(), calibration())
    return load_release(_write(tmp_path / "rel", files))


@pytest.mark.parametrize("fail", [False, True, "crash"], ids=["queued", "outbox_full", "crash"])
def test_an_input_the_head_cannot_judge_is_escalated_never_dropped(tmp_path, fail):
    link = RecordingLink(fail=fail)
    config = EdgeConfig(state_dir=tmp_path / "state")
    texts = ["calm kitchen", "a fire on the stove", "knife on the floor", "calm hall"]
    source = open_source(str(_lines(tmp_path / "in.txt", texts)))
    out = tmp_path / "events.jsonl"
    d = EdgeDaemon(config, NaNBackend(), source, EventLog(out),
                   release=_release_for_feature_backend(tmp_path))  # fmt: skip
    d.attach_link(link)
    assert link.head_live is True
    d.run(progress=False)
    evs = events(out)
    by_input = {e["input"]: e for e in evs if e.get("input")}
    assert set(by_input) == set(texts)  # every input has its event
    fire = by_input["a fire on the stove"]
    assert fire["type"] == "error" and "p_unsafe = nan" in fire["error"]
    assert fire["decision"]["escalate"] and "judge_error" in fire["decision"]["reasons"]
    if fail:  # the outbox could not take it: alerted here, a safety event
        assert fire["alert"] is True and "not_queued" in fire["decision"]["reasons"]
        assert fire["safety_event"] is True
        assert all(e["alert"] for e in evs if e.get("case_id"))
    else:
        queued = {c.case_id: c for c in link.cases}
        assert fire["case_id"] in queued
        assert queued[fire["case_id"]].reasons == ["judge_error"]
        assert queued[fire["case_id"]].p_unsafe is None
    assert evs[-1]["type"] == "summary" and evs[-1]["escalation_reasons"]["judge_error"] == 1


def test_events_are_strict_json_even_with_a_nan_in_them(tmp_path):
    log = EventLog(tmp_path / "e.jsonl")
    log.write({"p_unsafe": float("nan"), "nested": {"x": [float("inf"), 1.0]}})
    log.close()
    assert events(tmp_path / "e.jsonl") == [{"p_unsafe": None, "nested": {"x": [None, 1.0]}}]


# ---------------------------------------------------------------- 3. heartbeats
def test_heartbeats_say_the_head_is_not_live_and_the_teachers_report_names_the_edge(
    tmp_path, capsys
):
    from teacher.cli import main as teacher_main
    from tests.edge.test_link import link_config, teacher, wait_for

    server = teacher(tmp_path)
    link = LinkClient(link_config(tmp_path, server.endpoint), "e1", tmp_path / "edge")
    try:
        # A backend without hidden states runs the bundled release without its head.
        d = edge_daemon(tmp_path, ScriptedBackend("Answer: x.\nSAFETY: no\nCONFIDENCE: 0.9"))
        assert d.release.head is not None and d.head_live is False
        d.attach_link(link)
        link.start()
        wait_for(lambda: server.edges.get("e1") and server.edges["e1"].head_live is False)
        wait_for(lambda: server.store.edges() and server.store.edges()[0]["head_live"] is False)
    finally:
        link.stop()
        server.stop()
        server.store.close()
    assert teacher_main(["report", "--home", str(tmp_path / "teacher"),
                         "--out", str(tmp_path / "rep")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "WARNING: edge e1 runs release v0 without its safety head" in out


# ---------------------------------------------------------------- 4. crash-consistent state
def _install(state: Path, version: int) -> None:
    files = build_files(version, default_skill(), good_head(), calibration())
    updates.install_release(state, *push_of(files, version))


def test_a_swap_cut_short_is_repaired_at_start_with_one_log_line(tmp_path, caplog):
    _install(tmp_path, 1)
    root = tmp_path / "releases"
    (root / "v1").rename(root / ".v1.old")  # write_folder renamed it away, then the power went
    with caplog.at_level(logging.ERROR, logger="edge.updates"):
        release = updates.active_release(tmp_path)
    assert release.version == 1 and (root / "v1").is_dir()
    assert [r.message for r in caplog.records] == [
        "releases/active names v1, whose folder was missing: restored it from .v1.old"
    ]
    caplog.clear()
    assert updates.active_release(tmp_path).version == 1 and not caplog.records


def test_a_missing_or_damaged_active_release_falls_back_to_the_newest_complete_one(
    tmp_path, caplog
):
    for version in (1, 2, 3):
        _install(tmp_path, version)
    root = tmp_path / "releases"
    head = root / "v3" / HEAD_FILE
    data = bytearray(head.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte on disk
    head.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="edge.updates"):
        assert updates.active_release(tmp_path).version == 2
    assert (root / "active").read_text().strip() == "2"
    assert "names v3, whose folder is damaged: running v2" in caplog.text
    for version in (2, 1):
        import shutil

        shutil.rmtree(root / f"v{version}")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="edge.updates"):
        assert updates.active_release(tmp_path) is None  # the bundled default runs
    assert "no other release here is complete" in caplog.text
    assert not (root / "active").exists()


# ---------------------------------------------------------------- 5. exit status
@pytest.mark.slow
def test_a_start_up_error_exits_2_with_one_line_from_a_real_process(tmp_path):
    (tmp_path / "outbox").mkdir()  # an outbox path that is a folder: fails after the model
    config = tmp_path / "edge.yaml"
    config.write_text(
        f"link:\n  teacher: tcp://127.0.0.1:9\n  insecure: true\n  outbox: {tmp_path / 'outbox'}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    texts = _lines(tmp_path / "in.txt", ["calm"])
    cmd = [sys.executable, "-m", "tests.edge.scripted_edge", "--", "run", "--config",
           str(config), "--source", str(texts), "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot open the outbox {tmp_path / 'outbox'}: unable to open "
                      "database file"]  # fmt: skip


@pytest.mark.integration
@pytest.mark.slow
def test_the_installed_command_exits_2_not_sigabrt_after_the_real_model_loaded(tmp_path):
    (tmp_path / "outbox").mkdir()
    config = tmp_path / "edge.yaml"
    config.write_text(
        f"link:\n  teacher: tcp://127.0.0.1:9\n  insecure: true\n  outbox: {tmp_path / 'outbox'}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    texts = _lines(tmp_path / "in.txt", ["calm"])
    exe = Path(sys.executable).with_name("gemma-edge")
    done = subprocess.run([str(exe), "run", "--config", str(config), "--source", str(texts),
                           "--no-progress"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    assert [x for x in done.stderr.splitlines() if x.startswith("error:")] == [
        f"error: cannot open the outbox {tmp_path / 'outbox'}: unable to open database file"
    ]


# ---------------------------------------------------------------- 6. media limits
def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (a tiny file that decodes to gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_an_image_over_max_pixels_is_skipped_from_its_header_and_counted(tmp_path, caplog):
    import cv2

    folder = tmp_path / "shots"
    folder.mkdir()
    (folder / "a_bomb.png").write_bytes(png_header(20_000, 20_000))
    cv2.imwrite(str(folder / "b_ok.png"), np.full((48, 64, 3), 90, np.uint8))
    source = open_source(str(folder), max_pixels=16_777_216)
    with caplog.at_level(logging.ERROR):
        items = list(source)
    assert [Path(i.source).name for i in items] == ["b_ok.png"]
    assert source.bad == 1 and source.oversized == 1
    assert "pixels is over gate.max_pixels (16777216)" in caplog.text


def test_video_frames_over_max_pixels_are_skipped_and_counted(tmp_path):
    import cv2

    path = tmp_path / "big.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 64))
    for i in range(5):
        writer.write(np.full((64, 128, 3), 40 * i, np.uint8))
    writer.release()
    source = open_source(str(path), max_pixels=4096)  # 128 x 64 = 8192 pixels
    assert list(source) == [] and source.oversized == 5 and source.bad == 5
    assert len(list(open_source(str(path), max_pixels=8192))) == 5


# ---------------------------------------------------------------- 7. outbox integrity
def _esc(text: str = "a fire on the stove") -> Escalation:
    return Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=time.time(),
                      source="test", input=text)  # fmt: skip


def test_a_damaged_outbox_file_is_moved_aside_and_its_readable_rows_recovered(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    kept = [_esc(f"case {i} " + "x" * 3000) for i in range(60)]
    for e in kept:
        box.put(e, b"\xff\xd8" + bytes(2000))
    box.close()
    size = path.stat().st_size
    with open(path, "r+b") as f:  # 4 KiB of garbage in the middle of the file
        f.seek(size // 2 // 4096 * 4096)
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.ERROR, logger="edge.outbox"):
        box = Outbox(path)
    try:
        assert "was damaged" in caplog.text and "recovered into a new outbox" in caplog.text
        assert list(tmp_path.glob("outbox.sqlite.corrupt-*"))  # the damaged file is kept
        recovered = {p.case_id for p in box.after(0, 1000)}
        assert len(recovered) >= 40 and recovered <= {e.case_id for e in kept}
        assert box.depth() == len(recovered)
        assert box.put(_esc())  # and it takes new cases
        assert box._check() is None
    finally:
        box.close()


def test_a_file_that_is_not_a_database_starts_a_fresh_outbox(tmp_path, caplog):
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.ERROR, logger="edge.outbox"):
        box = Outbox(path)
    assert box.depth() == 0 and box.put(_esc()) and "was damaged" in caplog.text
    box.close()


def test_rows_corrupted_in_place_go_to_the_dead_table_once_and_the_rest_arrive(tmp_path):
    from tests.edge.test_link import link_config, teacher, wait_for

    cfg = link_config(tmp_path, "tcp://127.0.0.1:9")
    box = Outbox(cfg.outbox)
    good, garbled, renamed = _esc("good one"), _esc("garbled"), _esc("renamed")
    for e in (good, garbled, renamed):
        box.put(e)
    box.close()
    db = sqlite3.connect(cfg.outbox)
    db.execute("UPDATE outbox SET doc=? WHERE case_id=?", (b"\x00garbage{", garbled.case_id))
    other = renamed.model_copy(update={"case_id": uuid.uuid4().hex}).model_dump_json().encode()
    db.execute("UPDATE outbox SET doc=? WHERE case_id=?", (other, renamed.case_id))
    db.commit()
    db.close()
    server = teacher(tmp_path)
    link = LinkClient(cfg.model_copy(update={"teacher": server.endpoint}), "e1", tmp_path / "st")
    link.start()
    try:
        wait_for(lambda: server.store.get(good.case_id) is not None)
        wait_for(lambda: link.depth() == 0)
        dead = dict(link.outbox.dead())
        assert set(dead) == {garbled.case_id, renamed.case_id}
        assert "unreadable" in dead[garbled.case_id]
        assert "its document says case" in dead[renamed.case_id]
        time.sleep(0.5)
        assert server.store.get(garbled.case_id) is None
        assert len(server.store.report_rows()) == 1  # nothing stored under an id never issued
    finally:
        link.stop()
        server.stop()
        server.store.close()


# ---------------------------------------------------------------- 8. wire
DEEP = b'{"type": "heartbeat", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def test_json_nesting_is_measured_without_parsing():
    assert json_depth(b'{"a": [1, {"b": "[[[[["}]}') == 3
    assert json_depth(DEEP) == 100_001
    with pytest.raises(Exception, match="nests 100001 deep"):
        decode([DEEP])


def test_the_teacher_answers_deep_json_with_an_error_and_keeps_the_session(tmp_path, caplog):
    from tests.edge.test_link import teacher

    server = teacher(tmp_path)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(server.endpoint)
    try:
        with caplog.at_level(logging.WARNING):
            sock.send_multipart([DEEP])
            assert sock.poll(5000)
            reply, _ = decode(sock.recv_multipart())
        assert isinstance(reply, ErrorReply) and reply.code == "malformed"
        assert "nests" in reply.detail and "Traceback" not in caplog.text
        sock.send_multipart(encode(Heartbeat(sender="e1")))
        assert sock.poll(5000) and decode(sock.recv_multipart())[0].type == "heartbeat"
    finally:
        sock.close()
        server.stop()
        server.store.close()


def test_the_edge_answers_deep_json_with_an_error_and_keeps_its_session(tmp_path):
    from tests.edge.test_link import link_config

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    cfg = link_config(tmp_path, f"tcp://127.0.0.1:{port}").model_copy(update={"timeout_s": 5.0})
    link = LinkClient(cfg, "e1", tmp_path / "st")
    link.start()
    try:
        assert router.poll(5000)
        identity, *frames = router.recv_multipart()
        router.send_multipart([identity, *encode(Heartbeat(sender="teacher"))])
        router.send_multipart([identity, DEEP])
        got, same_session = None, True
        deadline = time.monotonic() + 5
        while got is None and time.monotonic() < deadline:
            if router.poll(200):
                who, *frames = router.recv_multipart()
                same_session &= who == identity
                msg, _ = decode(frames)
                got = msg if isinstance(msg, ErrorReply) else None
        assert got is not None and got.code == "malformed" and same_session
        link.escalate(_esc())  # and the same session still carries cases
        deadline = time.monotonic() + 5
        kinds = []
        while "escalation" not in kinds and time.monotonic() < deadline:
            if router.poll(200):
                who, *frames = router.recv_multipart()
                kinds.append(decode(frames)[0].type)
                same_session &= who == identity
        assert "escalation" in kinds and same_session
    finally:
        link.stop()
        router.close()


# ---------------------------------------------------------------- 9. labels files
def test_empty_and_non_utf8_labels_files_get_one_line_naming_file_and_place(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"input": "ok", "safety": false}\n{"input": "caf\xe9", "safety": true}\n')
    with pytest.raises(ConfigError) as e1:
        load_labeled(empty)
    assert e1.value.one_line() == f"{empty}: empty: no labelled cases in it"
    with pytest.raises(ConfigError) as e2:
        load_labeled(latin)
    assert e2.value.one_line().startswith(f"{latin}: line 2, byte 47:")
    assert e2.value.one_line().endswith("not UTF-8 text")


@pytest.mark.slow
def test_teacher_train_on_a_bad_labels_file_exits_2_with_one_line(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"input": "caf\xe9", "safety": true}\n')
    for labels in (latin, _lines(tmp_path / "empty.jsonl", [""])):
        cmd = [sys.executable, "-c", "from teacher.cli import main; main()", "train",
               "--labels", str(labels), "--home", str(tmp_path / "home")]  # fmt: skip
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {labels}: "), done.stderr
        assert "Traceback" not in done.stderr and "no --labels were given" not in done.stderr


# ---------------------------------------------------------------- the model of a release
def test_manifest_canaries_are_bounded_and_strict():
    entry = file_entry("skill.json", default_skill().to_bytes()).model_dump()
    base = {"version": 1, "files": [entry]}
    bad = [
        {"canary_tolerance": float("nan")},
        {"canary_tolerance": 0},
        {"canaries": [{"input": "x", "unsafe": True, "p_unsafe": 1.5, "decision": "pass"}]},
        {"canaries": [{"input": "x", "unsafe": True, "p_unsafe": None, "decision": "maybe"}]},
        {"canaries": [{"input": "x", "unsafe": True, "decision": "pass"}] * 33},
    ]
    for extra in bad:
        with pytest.raises(ValueError):
            Manifest.model_validate({**base, **extra})
    assert Manifest.model_validate(base).canaries == []


def test_model_error_from_a_canary_run_keeps_the_student_on_its_release(tmp_path):
    class Exploding(FeatureBackend):
        def generate(self, request):
            if "boom" in request.input:
                raise ModelError("engine fell over")
            return super().generate(request)

    daemon = edge_daemon(tmp_path, Exploding())
    before = daemon.release
    canary = Canary(input="boom", unsafe=False, p_unsafe=0.0, decision="pass")
    files = build_files(1, default_skill(), good_head(), calibration(), canaries=[canary])
    with pytest.raises(PushRejected, match="engine fell over"):
        updates.install_release(tmp_path / "state", *push_of(files, 1), daemon.prepare_release)
    assert daemon.student.release is before


@pytest.mark.integration
@pytest.mark.slow
def test_the_bundled_release_passes_its_canaries_on_a_default_edge_and_a_shifted_one_does_not():
    """v0's canaries were computed by the teacher's harness; a default edge (its own
    backend settings) reruns them through its Student and policy, and a canary whose
    p_unsafe disagrees by more than the tolerance refuses the release."""
    import torch

    from edge.run import start_backend
    from shared.backend import engine_of
    from shared.release import default_release

    torch.set_num_threads(2)
    config = EdgeConfig()
    backend = start_backend(config)
    try:
        v0 = default_release(engine_of(backend))  # the default edge's engine's v0
        assert v0.head.engine == engine_of(backend) == "llamacpp"
        assert len(v0.manifest.canaries) >= 4
        assert {c.unsafe for c in v0.manifest.canaries} == {True, False}
        student = Student(backend, v0, config.model.max_new_tokens)
        assert check_release(student, v0, config.policy) == []
        first = v0.manifest.canaries[0]
        shifted = first.model_copy(update={"p_unsafe": abs(first.p_unsafe - 0.5)})
        v0.manifest.canaries[0] = shifted
        problems = check_release(student, v0, config.policy)
        assert len(problems) == 1 and "teacher" in problems[0], problems
    finally:
        backend.close()


def test_a_hazard_caught_only_by_its_audit_draw_is_never_a_canary():
    """The draw hashes the case's place in the teacher's run: an edge that re-judges the
    canary draws again, and would refuse a release that passes it within its certificate."""
    from types import SimpleNamespace

    from shared.answer import Answer
    from shared.evaluation import LabeledCase
    from shared.policy import AUDIT, SAFETY_KEYWORD, UNCERTAIN_SAFETY, Decision
    from teacher.release.build import pick_canaries
    from teacher.release.harness import CaseResult

    def result(i, label, p, reasons=(), alert=False):
        decision = Decision(bool(reasons), tuple(reasons), alert=alert, p_unsafe=p)
        return CaseResult(f"c{i}", label, Answer("", None, None, True, "", p_unsafe=p),
                          decision, 0, 0.0)  # fmt: skip

    results = [
        result(0, True, 0.25, (AUDIT,)),  # passed by the head, drawn for audit
        result(1, True, 0.30, (UNCERTAIN_SAFETY,)),
        result(2, True, 0.20, (SAFETY_KEYWORD, AUDIT)),
        result(3, True, 0.99, alert=True),
        result(4, False, 0.01),
    ]
    cases = [LabeledCase(id=f"c{i}", input=f"scene {i}", safety=r.label)
             for i, r in enumerate(results)]  # fmt: skip
    picked = pick_canaries(SimpleNamespace(cases=results), cases, 6)
    assert [c.id for c in picked] == ["c1", "c4", "c2", "c3"]
    assert all(c.decision in ("escalate", "alert") for c in picked if c.unsafe)
