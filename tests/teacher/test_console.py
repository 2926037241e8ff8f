"""The console's ASGI app over a real SQLite store and release registry (no browser):
who may do what, the CSRF check, the queue's order, decisions reaching the edge, rollback,
and the same numbers as ``gemma-teacher report``. The browser tests are in
``test_console_browser.py``."""

from __future__ import annotations

import random
import re
import uuid

import pytest
from fastapi.testclient import TestClient

from shared.errors import ConfigError
from shared.messages import Escalation, Review
from shared.teacher_config import ConsoleConfig, TeacherConfig
from teacher.console.app import ROUTES, create_app, open_console
from teacher.console.views import flywheel_rows
from teacher.data import case_index
from teacher.data.store import CaseStore, default_store_path
from teacher.serve.keys import init_keys, new_edge
from teacher.serve.report import rows_for
from tests.teacher.console_helpers import BAND, REFUSED, add_releases

TOKEN = "s3cret-console-token-for-tests"


def add(store, text, p=None, safety=None, alert=False, audit_p=None, teacher=None, edge="e1",
        release=2, reasons=("uncertain_safety",), frame=None):  # fmt: skip
    e = Escalation(case_id=uuid.uuid4().hex, edge_id=edge, created_at=1.0, source="s",
                   input=text, p_unsafe=p, safety=safety, alert=alert, audit_p=audit_p,
                   release_version=release, reasons=list(reasons), has_frame=frame is not None)  # fmt: skip
    store.add_case(e, frame)
    if teacher is not None:
        store.add_review(Review(case_id=e.case_id, answer=f"Answer: t\nSAFETY: {'yes' if teacher else 'no'}",
                                safety=teacher, keywords=[], reviewer="labels"))  # fmt: skip
        store.mark_review_sent(e.case_id)
    return e.case_id


@pytest.fixture
def home(tmp_path):
    home = tmp_path / "home"
    store = CaseStore(default_store_path(home))
    ids = {
        "settled": add(store, "agreed, far from the band", p=0.01, teacher=False),
        "near": add(store, "agreed, inside the band", p=0.3, teacher=False),
        "unreviewed": add(store, "no verdict yet", p=0.01, frame=b"\xff\xd8jpeg"),
        "missed": add(store, "the student passed a hazard", p=0.1, teacher=True),
        "flagged": add(store, "the student flagged a safe scene", p=0.9, alert=True, teacher=False),
    }
    store.record_edge("e1", 2, True, 3)
    store.record_counts("e1", 1.0, {"2": 50})
    store.close()
    add_releases(home)
    return home, ids


def client(home, **console) -> TestClient:
    config = TeacherConfig(home=home, console=ConsoleConfig(**console))
    app = create_app(open_console(config))
    return TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)


def csrf_of(c: TestClient) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', c.get("/").text).group(1)


def rows(html: str) -> list[str]:
    return re.findall(r'data-case="([0-9a-f]+)"', html)


def test_the_queue_lists_what_a_verdict_is_worth_most_first_with_counts(home):
    home, ids = home
    c = client(home)
    page = c.get("/")
    assert page.status_code == 200
    assert rows(page.text) == [
        ids[k] for k in ("missed", "flagged", "unreviewed", "near", "settled")
    ]
    assert re.search(r'id="tab-disagreed"[^>]*>Disagreed <span class="count">2<', page.text)
    assert rows(c.get("/?state=unreviewed").text) == [ids["unreviewed"]]
    assert rows(c.get("/?reason=audit").text) == []
    assert rows(c.get("/?edge=e9").text) == []
    assert c.get(f"/case/{ids['unreviewed']}/frame.jpg").content == b"\xff\xd8jpeg"
    case = c.get(f"/case/{ids['missed']}")
    assert f'href="/case/{ids["flagged"]}"' in case.text and 'id="next"' in case.text
    assert "band 0.20–0.70 of v2" in case.text


def test_a_verdict_is_recorded_under_the_session_name_reaches_the_edge_and_undoes(home):
    home, ids = home
    c = client(home)
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/signin").text).group(1)
    c.post("/signin", data={"name": "ana", "csrf_token": token, "next": "/"})
    csrf = csrf_of(c)
    went = c.post(f"/case/{ids['flagged']}/decide", follow_redirects=False,
                  data={"verdict": "hazard", "answer": "A cat is on a hot stove.", "csrf_token": csrf})  # fmt: skip
    assert went.status_code == 303 and went.headers["location"].startswith(
        f"/case/{ids['unreviewed']}"
    )
    decision = int(re.search(r"undo=(\d+)", went.headers["location"]).group(1))
    store = CaseStore(default_store_path(home), recover=False)
    ((edge, review),) = store.unsent_corrections(["e1"])
    assert (edge, review.reviewer, review.safety) == ("e1", "person:ana", True)
    assert review.answer.startswith("Answer: A cat is on a hot stove.\nSAFETY: yes")
    assert store.decisions(ids["flagged"])[0]["who"] == "ana"
    assert ids["flagged"] not in rows(c.get("/").text)
    undone = c.post(
        f"/decisions/{decision}/undo", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert undone.headers["location"] == f"/case/{ids['flagged']}"
    assert store.unsent_corrections(["e1"]) == []
    assert [r.safety for _, r in store.unsent_reviews(["e1"])] == [False]  # the teacher's again
    again = c.post(f"/api/decisions/{decision}/undo", headers={"X-CSRF-Token": csrf})
    assert again.status_code == 409 and "undone already" in again.json()["error"]
    no_teacher = c.post(f"/api/cases/{ids['unreviewed']}/decide", json={"verdict": "teacher"},
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert no_teacher.status_code == 409 and "no verdict" in no_teacher.json()["error"]


def test_bulk_confirm_skips_what_the_edge_flagged(home):
    home, ids = home
    c = client(home)
    picked = [ids["missed"], ids["flagged"], ids["unreviewed"], ids["near"]]
    done = c.post("/api/confirm", json={"case_ids": picked}, headers={"X-CSRF-Token": csrf_of(c)})
    assert done.status_code == 200
    doc = done.json()
    assert doc["confirmed"] == 2 and set(doc["skipped"]) == {ids["flagged"], ids["unreviewed"]}
    assert rows(c.get("/?state=decided").text) == [ids["near"], ids["missed"]]


def test_every_state_changing_request_needs_the_csrf_token(home):
    home, ids = home
    c = client(home)
    c.get("/")  # a session, but no token sent
    posts = {
        f"/case/{ids['missed']}/decide": {"verdict": "safe"},
        "/decisions/1/undo": {},
        "/releases/1/activate": {},
        "/releases/repush": {},
        "/signout": {},
    }
    for path, form in posts.items():
        refused = c.post(path, data={**form, "csrf_token": "forged"}, follow_redirects=False)
        assert refused.status_code == 403 and "CSRF" in refused.text, path
    api = c.post(f"/api/cases/{ids['missed']}/decide", json={"verdict": "safe"})
    assert api.status_code == 403 and "CSRF" in api.json()["error"]
    assert c.post("/api/confirm", json={"case_ids": [ids["near"]]}).status_code == 403
    store = CaseStore(default_store_path(home), recover=False)
    assert store.queue_counts()["decided"] == 0 and store.decisions() == []
    assert open(home / "releases" / "active").read().strip() == "2"
    # every POST route of the app is one of those, or signs in (its own form token)
    app_posts = {r.path for m in ROUTES for r in m.router.routes if "POST" in r.methods}
    assert app_posts == {
        "/case/{case_id}/decide", "/decisions/{decision_id}/undo", "/releases/{version}/activate",
        "/releases/repush", "/signout", "/api/cases/{case_id}/decide",
        "/api/decisions/{decision_id}/undo", "/api/confirm", "/signin",
    }  # fmt: skip
    assert c.post("/signin", data={"name": "x", "csrf_token": "forged"}).status_code == 403


def test_a_rollback_asks_first_then_moves_the_active_release_and_a_repush_is_asked(home):
    home, _ = home
    c = client(home)
    page = c.get("/releases").text
    assert (
        'id="activate-1"' in page
        and 'id="activate-3"' in page
        and REFUSED.replace("<", "&lt;") in page
    )
    ask = c.get("/releases/1/activate")
    assert "Make release v1 active?" in ask.text and "Roll back to v1" in ask.text
    assert (home / "releases" / "active").read_text().strip() == "2"  # asking moved nothing
    warn = c.get("/releases/3/activate").text
    assert "The gate refused this release" in warn and REFUSED.replace("<", "&lt;") in warn
    done = c.post("/releases/1/activate", data={"csrf_token": csrf_of(c)})
    assert done.status_code == 200 and "v1 is active" in done.text
    assert (home / "releases" / "active").read_text().strip() == "1"
    assert c.post("/releases/9/activate", data={"csrf_token": csrf_of(c)}).status_code == 404
    c.post("/releases/repush", data={"csrf_token": csrf_of(c)})
    assert (home / "releases" / "push-request").is_file()


def test_with_a_token_nobody_gets_in_without_it(home):
    home, ids = home
    c = client(home, host="0.0.0.0", token=TOKEN)
    first = c.get("/", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"].startswith("/signin")
    assert c.get("/api/fleet").status_code == 401
    assert c.get(f"/case/{ids['missed']}/frame.jpg", follow_redirects=False).status_code == 303
    form = c.get("/signin").text
    login = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    wrong = c.post("/signin", data={"name": "ana", "token": "guess", "csrf_token": login})
    assert wrong.status_code == 401 and "not the token of this console" in wrong.text
    assert c.get("/", follow_redirects=False).status_code == 303
    stale = c.post("/signin", data={"name": "ana", "token": TOKEN, "csrf_token": login})
    assert stale.status_code == 403  # each form is good once: the wrong try made a new one
    login = re.search(r'name="csrf_token" value="([^"]+)"', wrong.text).group(1)
    ok = c.post("/signin", data={"name": "ana", "token": TOKEN, "csrf_token": login})
    assert ok.status_code == 200 and rows(ok.text)[0] == ids["missed"]
    script = TestClient(c.app, base_url="http://teacher-box:8765")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert script.get("/api/fleet", headers=bearer).json()["edges"][0]["edge_id"] == "e1"
    assert (
        script.post("/api/confirm", json={"case_ids": [ids["near"]]}, headers=bearer).json()[
            "confirmed"
        ]
        == 1
    )


def test_a_loopback_console_without_a_token_answers_no_other_host_name(home):
    home, _ = home
    c = client(home)
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 403  # DNS rebinding
    assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200


def test_an_exposed_host_without_a_token_fails_at_start_with_one_line(home, capsys):
    from teacher.cli import main

    home, _ = home
    with pytest.raises(ConfigError, match="console.token"):
        open_console(TeacherConfig(home=home, console=ConsoleConfig(host="0.0.0.0")))
    assert main(["console", "--home", str(home), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: console: console.host: '0.0.0.0'")
    assert main(["console", "--home", str(home / "nowhere")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_no_page_shows_the_token_or_a_key(home, tmp_path):
    home, ids = home
    keys = tmp_path / "keys"
    init_keys(keys)
    new_edge(keys, "e1")
    secrets = [TOKEN] + [
        line.split('"')[1]
        for path in keys.rglob("*key*")
        for line in path.read_text().splitlines()
        if "-key" in line and '"' in line
    ]
    assert len(secrets) >= 5
    config = TeacherConfig(home=home, console=ConsoleConfig(token=TOKEN))
    config.server.keys_dir = keys
    c = TestClient(create_app(open_console(config)), base_url="http://127.0.0.1:8765")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    pages = ["/", "/?state=all", f"/case/{ids['missed']}", "/fleet", "/releases", "/flywheel",
             "/releases/1/activate", "/releases/repush", "/signin", "/api/fleet", "/api/flywheel"]  # fmt: skip
    for path in pages:
        text = c.get(path, headers=bearer).text
        assert not [s for s in secrets if s in text], path


def test_errors_are_one_line_pages_never_a_traceback(home, monkeypatch):
    home, ids = home
    c = client(home)
    missing = c.get("/case/nope")
    assert missing.status_code == 404 and "no case &#39;nope&#39; in the store" in missing.text
    assert c.get("/?state=bogus").status_code == 400
    monkeypatch.setattr(CaseStore, "queue_counts", lambda *a, **k: 1 / 0)
    broken = c.get("/")
    assert broken.status_code == 500 and "internal error" in broken.text
    assert "Traceback" not in broken.text and "ZeroDivisionError" not in broken.text


def test_fleet_and_flywheel_give_the_numbers_of_gemma_teacher_report(tmp_path):
    rng = random.Random(7)
    store = CaseStore(tmp_path / "s.sqlite")
    store._db.execute("PRAGMA synchronous=OFF")  # 600 cases, each its own commit: no fsyncs
    for i in range(600):
        reasons = rng.choice([["uncertain_safety"], ["audit"], ["safety_keyword"],
                              ["audit", "safety_keyword"], ["format_error"]])  # fmt: skip
        teacher = rng.choice([True, False, None])
        cid = add(store, f"scene {i}", p=rng.random(), alert=rng.random() < 0.2,
                  audit_p=rng.choice([0.05, 0.2, 0.5]) if "audit" in reasons else None,
                  teacher=teacher, edge=rng.choice(["e1", "e2"]), release=rng.choice([0, 1, 2]),
                  reasons=reasons)  # fmt: skip
        if rng.random() < 0.15:
            store.decide(cid, rng.random() < 0.5, "ana")
    for edge in ("e1", "e2"):
        store.record_counts(edge, 1.0, {"0": 900, "1": 700})
        store.record_counts(edge, 2.0, {"1": 100, "2": 800})
    report = {r.release: r for r in rows_for(store.report_rows(), store.input_counts())
              if r.label.endswith("(all edges)")}  # fmt: skip
    mine = {r.release: r for r in flywheel_rows(store.release_evidence(), store.input_counts())}
    assert set(mine) == set(report) == {0, 1, 2}
    for release, r in report.items():
        m = mine[release]
        assert (m.inputs, m.calls_per_100) == (r.inputs, r.teacher_calls_per_100)
        assert (m.recall, m.low, m.high) == pytest.approx(
            (r.audit_recall, r.audit_low, r.audit_high)
        )
    per_edge = {(r.label.split()[1], r.release): r.teacher_calls_per_100
                for r in rows_for(store.report_rows(), store.input_counts())
                if not r.label.endswith("(all edges)")}  # fmt: skip
    calls, inputs = store.calls_by_edge_release(), store.input_counts()
    for (edge, release), value in per_edge.items():
        assert 100 * calls.get((edge, release), 0) / inputs[(edge, release)] == pytest.approx(value)


def test_a_store_from_before_the_case_index_is_indexed_once_when_it_opens(tmp_path):
    path = tmp_path / "s.sqlite"
    store = CaseStore(path)
    ids = [add(store, f"scene {i}", p=i / 10, teacher=i % 2 == 0) for i in range(10)]
    store.decide(ids[3], True, "ana")
    before = [c["case_id"] for c in store.queue()]
    triggers = store._db.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall()
    store._db.executescript("".join(f"DROP TRIGGER {n};" for (n,) in triggers)
                            + "DROP TABLE case_index; DROP TABLE bands;")  # fmt: skip
    store.close()
    again = CaseStore(path)
    assert [c["case_id"] for c in again.queue()] == before
    assert again.queue_counts()["decided"] == 1 and ids[3] not in before
    stamp = [r[0] for r in again._db.execute("SELECT name FROM sqlite_master WHERE type='trigger'")]
    assert all(n.endswith(case_index._VERSION) for n in stamp) and len(stamp) == 9


def test_bands_come_from_the_releases_and_rescore_their_cases(home):
    home, ids = home
    c = client(home)
    c.get("/")
    store = CaseStore(default_store_path(home), recover=False)
    bands = dict((r, (lo, hi)) for r, lo, hi in store._db.execute("SELECT * FROM bands"))
    assert bands[2] == BAND and set(bands) == {0, 1, 2, 3}
    near = store.queue_case(ids["near"])["worth"]
    store.set_bands([type("B", (), {"release": 2, "lower": 0.5, "upper": 0.9})()])
    assert store.queue_case(ids["near"])["worth"] < near  # p 0.3 is now outside the band
