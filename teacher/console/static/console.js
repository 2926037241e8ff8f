// gemma-teacher console: keyboard shortcuts, row selection and bulk confirm. No build step.
(function () {
  "use strict";
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const page = document.body.dataset.page;

  function typing(e) {
    const t = e.target;
    return t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable ||
      (t.tagName === "INPUT" && !["checkbox", "radio", "button", "submit"].includes(t.type)));
  }
  function click(sel, e) {
    const el = document.querySelector(sel);
    if (el && !el.disabled) { if (e) e.preventDefault(); el.click(); return true; }
    return false;
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    const doc = await r.json().catch(() => ({ error: r.status + " " + r.statusText }));
    if (!r.ok) throw new Error(doc.error || r.statusText);
    return doc;
  }
  function flash(text, kind) {
    const el = document.getElementById("flash");
    if (!el) { window.alert(text); return; }
    el.textContent = text; el.className = "flash " + (kind || ""); el.hidden = false;
  }

  // ------------------------------------------------------------------ one case
  if (page === "case") {
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (typing(e)) { if (e.key === "Escape") e.target.blur(); return; }
      switch (e.key) {
        case "y": click("#v-hazard", e); break;
        case "n": click("#v-safe", e); break;
        case "c": click("#v-teacher", e); break;
        case "j": click("#next", e); break;
        case "k": click("#prev", e); break;
        case "u": click("#undo", e); break;
        case "q": click("#back", e); break;
        case "e": { const a = document.getElementById("answer"); if (a) { e.preventDefault(); a.focus(); } break; }
      }
    });
  }

  // ------------------------------------------------------------------ the queue
  if (page === "queue") {
    const rows = Array.from(document.querySelectorAll("tr.case"));
    const all = document.getElementById("select-all");
    const bulk = document.getElementById("bulk-confirm");
    const picked = document.getElementById("picked");
    const undone = [];  // decision ids made on this page, latest last
    let cur = rows.length ? 0 : -1;
    let anchor = null;

    function show() {
      rows.forEach((r, i) => r.classList.toggle("current", i === cur));
      if (cur >= 0) rows[cur].scrollIntoView({ block: "nearest" });
    }
    function picks() { return rows.filter((r) => r.querySelector(".pick").checked); }
    function count() {
      const n = picks().length;
      picked.textContent = n; bulk.disabled = n === 0;
      rows.forEach((r) => r.classList.toggle("picked", r.querySelector(".pick").checked));
      if (all) all.checked = n > 0 && n === rows.length;
    }
    function move(step) {
      if (!rows.length) return;
      cur = Math.max(0, Math.min(rows.length - 1, cur + step)); show();
    }
    async function decide(verdict) {
      if (cur < 0) return;
      const row = rows[cur];
      if (verdict === "teacher" && row.dataset.teacher === "") { flash("The teacher has no verdict on this case yet.", "bad"); return; }
      try {
        const doc = await post("/api/cases/" + row.dataset.case + "/decide", { verdict: verdict });
        undone.push({ id: doc.decision_id, row: row });
        row.classList.add("done");
        row.querySelector(".person").innerHTML = "";
        const v = document.createElement("span");
        v.className = "v " + (doc.safety ? "hazard" : "safe"); v.textContent = doc.safety ? "hazard" : "safe";
        row.querySelector(".person").append(v, " ", Object.assign(document.createElement("span"), { className: "muted", textContent: "you" }));
        flash("Decision " + doc.decision_id + " recorded (u undoes it).", "ok");
        move(1);
      } catch (err) { flash(err.message, "bad"); }
    }
    async function undo() {
      const last = undone.pop();
      if (!last) { click("#undo"); return; }
      try {
        await post("/api/decisions/" + last.id + "/undo");
        last.row.classList.remove("done"); last.row.querySelector(".person").textContent = "";
        cur = rows.indexOf(last.row); show();
        flash("Decision " + last.id + " undone.", "ok");
      } catch (err) { flash(err.message, "bad"); }
    }

    rows.forEach((row, i) => {
      const box = row.querySelector(".pick");
      box.addEventListener("click", (e) => {
        e.stopPropagation();
        if (e.shiftKey && anchor !== null) {
          const [a, b] = [Math.min(anchor, i), Math.max(anchor, i)];
          for (let k = a; k <= b; k++) rows[k].querySelector(".pick").checked = box.checked;
        }
        anchor = i; count();
      });
      row.addEventListener("click", (e) => {
        if (e.target.closest("a, input, button")) return;
        cur = i; show();
      });
      row.addEventListener("dblclick", () => { window.location = row.dataset.href; });
    });
    if (all) all.addEventListener("change", () => { rows.forEach((r) => { r.querySelector(".pick").checked = all.checked; }); count(); });
    if (bulk) bulk.addEventListener("click", async () => {
      const ids = picks().map((r) => r.dataset.case);
      if (!ids.length) return;
      const ok = window.confirm("Confirm the teacher's verdict on " + ids.length + " selected case(s)?\n\n" +
        "Each is recorded under your name and sent to its edge. Cases without a teacher verdict, already decided, " +
        "or that the teacher calls safe but the edge flagged are skipped: look at those one by one.");
      if (!ok) return;
      try {
        const doc = await post("/api/confirm", { case_ids: ids });
        const skipped = Object.entries(doc.skipped || {});
        let text = "Confirmed the teacher on " + doc.confirmed + " case(s).";
        if (skipped.length) text += " Skipped " + skipped.length + ": " + skipped.slice(0, 5).map(([id, why]) => id.slice(0, 8) + " (" + why + ")").join("; ");
        flash(text, skipped.length ? "" : "ok");
        ids.forEach((id) => { if (!(id in (doc.skipped || {}))) { const r = rows.find((x) => x.dataset.case === id); if (r) r.classList.add("done"); } });
        rows.forEach((r) => { r.querySelector(".pick").checked = false; }); count();
      } catch (err) { flash(err.message, "bad"); }
    });

    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
      switch (e.key) {
        case "j": e.preventDefault(); move(1); break;
        case "k": e.preventDefault(); move(-1); break;
        case "Enter": case "o": if (cur >= 0) { e.preventDefault(); window.location = rows[cur].dataset.href; } break;
        case "x": if (cur >= 0) { e.preventDefault(); const b = rows[cur].querySelector(".pick"); b.checked = !b.checked; anchor = cur; count(); } break;
        case "y": e.preventDefault(); decide("hazard"); break;
        case "n": e.preventDefault(); decide("safe"); break;
        case "c": e.preventDefault(); decide("teacher"); break;
        case "u": e.preventDefault(); undo(); break;
      }
    });
    show(); count();
  }
})();
