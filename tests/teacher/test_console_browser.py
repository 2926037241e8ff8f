"""The console in a real browser: Debian's chromium (headless, driven by Playwright) against
a real ``gemma-teacher serve`` and ``gemma-teacher console``, with real escalations sent
over ZeroMQ by a real edge link that records what the teacher sends back.

Set ``GEMMA_CONSOLE_SCREENSHOTS=bench/results/console`` to keep the screenshots of each
page there (otherwise they go to a temporary folder). Skipped, with the reason, where
Playwright or ``/usr/bin/chromium`` (``apt-get install chromium``) is missing; never runs
``playwright install``.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from edge.link import LinkClient
from shared.config import LinkConfig
from shared.errors import PushRejected
from shared.messages import Escalation, Review
from teacher.data.store import CaseStore, default_store_path
from tests.helpers import free_port
from tests.teacher.console_helpers import add_releases, scene_jpeg

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
TOKEN = "browser-test-token-8c1f0e"
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)
if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

# (name, input, p_unsafe, alert, reasons, audit_p, frame: None | fire?, label: None | hazard?)
SCENES = [
    ("missed", "A pan of oil is on fire on the stove.", 0.10, False, ["safety_keyword"], None, True, True),
    ("flagged", "A cat is asleep on the stove cover.", 0.85, True, ["uncertain_safety"], None, False, False),
    ("unknown", "Something moves behind the frosted glass.", 0.45, False, ["uncertain_safety"], None, False, None),
    ("agreed", "A toddler reaches for the kettle cord.", 0.55, False, ["uncertain_safety"], None, None, True),
    ("audit", "The corridor floor is wet next to a warning sign.", 0.05, False, ["audit"], 0.2, None, False),
    ("far", "A person reads a book at a desk.", 0.02, False, ["safety_keyword"], None, None, False),
]  # fmt: skip
ORDER = ["missed", "flagged", "unknown", "audit", "agreed", "far"]  # by worth, band 0.2-0.7
INPUTS = 40
REFUSAL = "canary 3: p_unsafe 0.41 differs from the teacher's 0.12 by more than 0.05"


def add_history(home: Path) -> None:
    """Rounds before this one, settled long ago: e1's inputs and escalations under v0 and
    v1, reviewed, decided by a person and sent (so none is in the queue or on the wire)."""
    rng = random.Random(3)
    store = CaseStore(default_store_path(home))
    cases, reviews = [], []
    for release, inputs, calls in ((0, 400, 120), (1, 300, 75)):
        store.record_counts("e1", 1.0 + release, {str(release): inputs})
        for i in range(calls):
            audit = i % 5 == 0
            p = rng.random() * (0.2 if audit else 1.0)
            truth = p > 0.5 if not audit else (release, i) == (0, 50)  # one hazard found
            case = Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=1.0 + i,
                              source="notes.txt", input=f"an earlier scene {release}-{i}",
                              p_unsafe=p, alert=p > 0.8, release_version=release,
                              reasons=["audit"] if audit else ["uncertain_safety"],
                              audit_p=0.1 if audit else None)  # fmt: skip
            cases.append((case, None))
            reviews.append(Review(case_id=case.case_id, safety=truth, keywords=[],
                                  answer="Answer: earlier.\nSAFETY: no", reviewer="labels"))  # fmt: skip
    store.add_cases(cases)
    store.add_reviews(reviews)
    store.mark_reviews_sent([c.case_id for c, _ in cases])
    store.confirm_teacher([c.case_id for c, _ in cases], "history")
    store.mark_corrections_sent([c.case_id for c, _ in cases])
    store.close()


def refuse(release) -> None:
    raise PushRejected(REFUSAL)


def wait_for(cond, timeout: float = 15.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met in {timeout} s")
        time.sleep(0.05)


def start(args: list[str], log: Path, ready: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "teacher", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=log.open("w"))  # fmt: skip
    line = proc.stdout.readline()
    if ready not in line:
        proc.kill()
        raise AssertionError(f"{args[0]} did not start: {line!r}; {log.read_text()[-2000:]}")
    return proc, line


def outside_address() -> str:
    """This machine's address on its network (no packet is sent), else loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect(("192.0.2.1", 9))
        address = sock.getsockname()[0]
    except OSError:
        address = "127.0.0.1"
    finally:
        sock.close()
    return address


def edge_link(endpoint: str, folder: Path, edge_id: str, **hooks) -> LinkClient:
    """An edge's link to the teacher (its outbox and state under ``folder``), quick to retry."""
    cfg = LinkConfig(teacher=endpoint, insecure=True, outbox=folder / "outbox.sqlite",
                     heartbeat_s=0.2, timeout_s=1.0, reconnect_max_s=0.5)  # fmt: skip
    return LinkClient(cfg, edge_id, folder / "state", **hooks)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A teacher box: ``serve`` with real escalations and reviews, ``console`` beside it."""
    tmp = tmp_path_factory.mktemp("console")
    home = tmp / "home"
    add_releases(home)
    add_history(home)
    labels = tmp / "labels.jsonl"
    labels.write_text("".join(json.dumps({"input": s[1], "safety": s[7], "keywords": []}) + "\n"
                              for s in SCENES if s[7] is not None))  # fmt: skip
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp / "teacher.yaml"
    doc = {"home": str(home),
           "server": {"bind": endpoint, "insecure": True, "heartbeat_s": 0.2, "push_retry_s": 1},
           "reviewer": {"backend": "labels", "labels": str(labels)}}  # fmt: skip
    config.write_text(yaml.safe_dump(doc))
    procs = []
    got = []
    # e2 runs v1 without its head and refuses v2 (its canaries disagree): the fleet says so
    behind = edge_link(endpoint, tmp / "e2", "e2", prepare_release=refuse)
    behind.set_versions(0, 0, 1, False)
    for _ in range(25):
        behind.count_input(1)
    link = edge_link(endpoint, tmp / "edge", "e1", on_review=got.append)
    try:
        serve, _ = start(["serve", "--config", str(config)], tmp / "serve.log", "serving on")
        procs.append(serve)
        link.set_versions(0, 0, 2, True)
        for _ in range(INPUTS):
            link.count_input(2)
        link.start()
        behind.start()
        ids = {}
        for i, (name, text, p, alert, reasons, audit_p, fire, _) in enumerate(SCENES):
            frame = None if fire is None else scene_jpeg(i, fire)
            case = Escalation(case_id=uuid.uuid4().hex, edge_id="e1", created_at=time.time(),
                              source="rtsp://kitchen-cam/stream" if frame else "notes.txt",
                              kind="frame" if frame else "text", input=text, p_unsafe=p,
                              safety=p >= 0.5, alert=alert, reasons=reasons, audit_p=audit_p,
                              release_version=2, answer=f"Answer: {text}\nSAFETY: "
                              f"{'yes' if p >= 0.5 else 'no'}\nCONFIDENCE: 0.60")  # fmt: skip
            link.escalate(case, frame)
            ids[name] = case.case_id
        wait_for(lambda: link.depth() == 0, what="the edge's outbox to drain")
        wait_for(lambda: len(got) == 5, what="the teacher's 5 reviews at the edge")
        port = free_port()
        console, line = start(["console", "--config", str(config), "--port", str(port)],
                              tmp / "console.log", "gemma-teacher console on")  # fmt: skip
        procs.append(console)
        base = re.search(r"(http://\S+?)/? ", line).group(1)
        shots = Path(os.environ.get("GEMMA_CONSOLE_SCREENSHOTS") or tmp / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        yield SimpleNamespace(home=home, config=config, doc=doc, link=link, got=got, ids=ids,
                              base=base, shots=shots, tmp=tmp)  # fmt: skip
    finally:
        link.stop()
        behind.stop()
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, box):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(box.base + "/signin")
    page.fill("input[name=name]", "ana")
    page.click("button[type=submit]")
    page.wait_for_url(box.base + "/")
    yield page
    context.close()


def store(box) -> CaseStore:
    return CaseStore(default_store_path(box.home), recover=False)


def rows(page) -> list[str]:
    return page.eval_on_selector_all("tr.case", "rs => rs.map(r => r.dataset.case)")


def test_the_queue_lists_escalations_in_order_and_a_keyboard_verdict_reaches_the_edge(box, page):
    assert rows(page) == [box.ids[n] for n in ORDER]
    assert page.inner_text("#tab-disagreed .count") == "2"
    frames = page.locator("td.thumb img")
    wait_for(lambda: frames.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth)"),
             what="the frames to load")  # fmt: skip
    page.screenshot(path=box.shots / "queue.png")

    page.keyboard.press("j")  # the second row: the cat the edge alerted on, the teacher calls safe
    page.keyboard.press("Enter")
    flagged = box.ids["flagged"]
    page.wait_for_url(f"{box.base}/case/{flagged}")
    page.keyboard.press("e")
    page.keyboard.type("A cat is lying on a hot stove top.")
    page.keyboard.press("Escape")
    page.screenshot(path=box.shots / "case.png")
    page.keyboard.press("y")  # hazard: a correction of the teacher, then the next case
    page.wait_for_url(re.compile(rf"/case/{box.ids['unknown']}\?undo=\d+"))
    wait_for(lambda: any(r.case_id == flagged and r.reviewer == "person:ana" for r in box.got),
             what="the person's review at the edge")  # fmt: skip
    review = [r for r in box.got if r.case_id == flagged][-1]
    assert review.safety is True
    assert review.answer.startswith("Answer: A cat is lying on a hot stove top.\nSAFETY: yes")
    assert store(box).decisions(flagged)[0]["who"] == "ana"

    page.keyboard.press("u")  # undo: the teacher's verdict stands and reaches the edge again
    page.wait_for_url(f"{box.base}/case/{flagged}")
    wait_for(lambda: box.got[-1].case_id == flagged and box.got[-1].safety is False,
             what="the teacher's review at the edge again")  # fmt: skip
    assert "undone by ana" in page.inner_text("#history")

    page.goto(box.base + "/")  # bulk: shift-click a range, a dialog that says how many
    boxes = page.locator("tr.case .pick")
    boxes.nth(0).click()
    boxes.nth(3).click(modifiers=["Shift"])
    assert page.inner_text("#picked") == "4"
    said = []
    page.once("dialog", lambda d: (said.append(d.message), d.accept()))
    page.click("#bulk-confirm")
    page.wait_for_selector("#flash:not([hidden])")
    assert said and "4 selected case(s)" in said[0]
    assert "Confirmed the teacher on 2 case(s). Skipped 2" in page.inner_text("#flash")
    live = set(box.ids.values())
    decided = {d["case_id"] for d in store(box).decisions(limit=1000)
               if d["undone_at"] is None and d["case_id"] in live}  # fmt: skip
    assert decided == {box.ids["missed"], box.ids["audit"]}  # not the flagged, not the unknown
    wait_for(lambda: any(r.case_id == box.ids["missed"] and r.reviewer == "person:ana"
                         for r in box.got), what="the confirmation at the edge")  # fmt: skip


def test_fleet_and_flywheel_show_the_edge_and_its_numbers(box, page):
    page.goto(box.base + "/fleet")
    row = page.inner_text("tr[data-edge=e1]")
    assert "v2" in row and "live" in row and str(INPUTS) in row and "15.0" in row  # 6 calls / 40

    def refused() -> bool:
        page.reload()
        e2 = page.locator("tr[data-edge=e2]")
        return e2.count() == 1 and "refused" in e2.inner_text()

    wait_for(refused, what="e2's refusal on the fleet page")
    row = page.inner_text("tr[data-edge=e2]")
    assert "not v2" in row and "NOT live" in row and "canary 3" in row
    page.screenshot(path=box.shots / "fleet.png")
    page.goto(box.base + "/flywheel")
    assert "15.0" in page.inner_text("tr[data-release='2']")
    assert "30.0" in page.inner_text("tr[data-release='0']")  # 120 calls / 400 inputs
    assert page.locator("#chart rect.bar").count() == 3
    page.screenshot(path=box.shots / "flywheel.png")


def test_a_post_without_the_csrf_token_is_refused(box, page):
    case = box.ids["far"]
    api = page.request.post(f"{box.base}/api/cases/{case}/decide", data={"verdict": "hazard"})
    assert api.status == 403 and "CSRF" in api.json()["error"]
    form = page.request.post(f"{box.base}/releases/1/activate", form={"csrf_token": "forged"})
    assert form.status == 403
    status = page.evaluate(
        "fetch('/api/confirm', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        f" body: JSON.stringify({{case_ids: ['{case}']}})}}).then(r => r.status)"
    )
    assert status == 403
    assert store(box).decisions(case) == []
    assert (box.home / "releases" / "active").read_text().strip() == "2"


def test_a_rollback_asks_for_confirmation_then_moves_the_active_release(box, page):
    page.goto(box.base + "/releases")
    assert page.inner_text("#active") == "v2"
    assert "refused" in page.inner_text("#release-3") and "McNemar" in page.inner_text("#release-3")
    page.screenshot(path=box.shots / "releases.png")
    page.click("#activate-1")
    page.wait_for_url(f"{box.base}/releases/1/activate")
    assert "Make release v1 active?" in page.inner_text("h1")
    assert (box.home / "releases" / "active").read_text().strip() == "2"  # asked, not done
    page.screenshot(path=box.shots / "rollback-confirm.png")
    page.click("#yes")
    page.wait_for_selector("#done")
    assert "v1 is active" in page.inner_text("#done") and page.inner_text("#active") == "v1"
    assert (box.home / "releases" / "active").read_text().strip() == "1"
    wait_for(lambda: box.link.release_version == 1, what="the edge to install v1")


def test_a_console_bound_beyond_loopback_refuses_anyone_without_the_token(box, browser):
    bare = subprocess.run([sys.executable, "-m", "teacher", "console", "--config", str(box.config),
                           "--host", "0.0.0.0", "--port", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert bare.returncode == 2 and len(bare.stderr.strip().splitlines()) == 1
    assert "console.token" in bare.stderr
    config = box.tmp / "exposed.yaml"
    config.write_text(yaml.safe_dump({**box.doc, "console": {"host": "0.0.0.0", "token": TOKEN}}))
    port = free_port()
    proc, line = start(["console", "--config", str(config), "--port", str(port)],
                       box.tmp / "exposed.log", "gemma-teacher console on")  # fmt: skip
    try:
        assert "sign in with console.token" in line
        base = f"http://{outside_address()}:{port}"
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        page.goto(base + "/")
        assert page.url.startswith(base + "/signin")
        assert page.request.get(base + "/api/fleet").status == 401
        assert page.request.get(f"{base}/case/{box.ids['missed']}/frame.jpg",
                                max_redirects=0).status == 303  # fmt: skip
        page.screenshot(path=box.shots / "signin.png")
        page.fill("input[name=name]", "bo")
        page.fill("input[name=token]", "a guess")
        page.click("button[type=submit]")
        assert "not the token of this console" in page.inner_text("#signin-error")
        page.fill("input[name=name]", "bo")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(base + "/")
        assert page.inner_text("#who") == "bo" and TOKEN not in page.content()
        context.close()
    finally:
        proc.terminate()
        proc.wait(10)
