// clusterbus console: renders the snapshot pushed on /api/console/events,
// updating only the cells that changed (a selection survives an update).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const TOKEN = "clusterbus.token";
  let snap = null, lastMsg = 0, detailID = "";

  // ---- formatting ----
  const ms = (d) => d / 1e6; // Go durations are nanoseconds
  function dur(msec) {
    if (msec == null || msec < 0) return "—";
    if (msec < 1) return Math.round(msec * 1000) + " µs";
    if (msec < 1000) return Math.round(msec) + " ms";
    const s = msec / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    const m = s / 60;
    if (m < 60) return Math.floor(m) + " m " + Math.round(s % 60) + " s";
    const h = m / 60;
    if (h < 48) return Math.floor(h) + " h " + Math.round(m % 60) + " m";
    return Math.floor(h / 24) + " d " + Math.round(h % 24) + " h";
  }
  const t = (iso) => (iso && !iso.startsWith("0001") ? new Date(iso) : null);
  function ago(iso) {
    const d = t(iso);
    return d ? dur(new Date(snap.now) - d) + " ago" : "—";
  }
  function clock(iso) {
    const d = t(iso);
    return d ? d.toISOString().replace("T", " ").slice(0, 19) + " UTC" : "—";
  }
  const state = (s) => ({ badge: s || "?" });

  // ---- keyed table rendering ----
  function cell(td, c) {
    if (c == null) c = "";
    if (typeof c !== "object") c = { text: String(c) };
    const sig = JSON.stringify(c, (k, v) => (typeof v === "function" ? undefined : v));
    if (td.dataset.sig === sig) { if (c.button) td.firstChild.onclick = c.onclick; return; }
    td.dataset.sig = sig;
    td.className = c.cls || "";
    td.textContent = "";
    if (c.badge !== undefined) {
      const b = document.createElement("span");
      b.className = "badge s-" + c.badge;
      b.textContent = c.badge.replace("_", "-");
      td.appendChild(b);
      if (c.reason) { const r = document.createElement("span"); r.className = "reason"; r.textContent = c.reason; td.appendChild(r); }
    } else if (c.button) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = c.button; b.onclick = c.onclick;
      if (c.label) b.setAttribute("aria-label", c.label);
      if (c.link) b.className = "link";
      td.appendChild(b);
    } else if (c.href) {
      const a = document.createElement("a");
      a.href = c.href; a.textContent = c.text; td.appendChild(a);
    } else td.textContent = c.text;
    if (c.title) td.title = c.title; else td.removeAttribute("title");
  }
  function rows(table, items, key, cells, rowClass) {
    const tb = $(table).tBodies[0];
    const old = new Map();
    for (const tr of tb.rows) old.set(tr.dataset.key, tr);
    let prev = null;
    for (const it of items) {
      const k = key(it);
      let tr = old.get(k);
      if (tr) old.delete(k); else { tr = document.createElement("tr"); tr.dataset.key = k; }
      const cs = cells(it);
      while (tr.cells.length < cs.length) tr.appendChild(document.createElement("td"));
      cs.forEach((c, i) => cell(tr.cells[i], c));
      tr.className = rowClass ? rowClass(it) : "";
      const want = prev ? prev.nextSibling : tb.firstChild;
      if (want !== tr) tb.insertBefore(tr, want);
      prev = tr;
    }
    old.forEach((tr) => tr.remove());
  }
  function setText(id, s) { const e = $(id); if (e.textContent !== s) e.textContent = s; }

  // ---- render ----
  function render(s) {
    snap = s;
    const c = s.cluster;
    document.title = "clusterbus · " + c.cluster;
    setText("cluster-name", "· " + c.cluster);
    const lead = c.nodes.find((n) => n.id === c.lead);
    setText("summary", "lead " + (lead ? (lead.host + " (" + lead.id + ")") : "none") + " · term " + c.term +
      " · " + c.nodes.filter((n) => n.state !== "unreachable").length + " of " + c.nodes.length + " members live · seen from " +
      c.local + (s.broker ? " · broker " + s.broker : ""));

    const al = $("alerts");
    const items = s.alerts.length ? s.alerts : [{ level: "ok", text: "All well: every member active, broker connected, nothing rejected." }];
    const sig = JSON.stringify(items);
    if (al.dataset.sig !== sig) {
      al.dataset.sig = sig; al.textContent = "";
      for (const a of items) { const li = document.createElement("li"); li.className = a.level; li.textContent = a.text; al.appendChild(li); }
    }

    rows("members", c.nodes, (n) => n.id, (n) => [
      n.host, n.ip, n.http_addr ? { text: n.http_addr, href: n.http_addr + "/" } : "—", { text: n.id, cls: "mono" },
      n.lead ? "★ lead" : "", n.local ? "this node" : "",
      { badge: n.state, reason: n.state === "active" || n.reason === "ok" ? "" : (n.reason || "") },
      n.version || "—", dur(new Date(s.now) - new Date(n.started_at)), ago(n.last_heartbeat),
      { text: n.clock_skew_ms + " ms" + (n.clock_skewed ? " (skewed)" : ""), cls: n.clock_skewed ? "s-failed" : "" },
      n.state === "active" || n.state === "starting"
        ? { button: "Drain", label: "Take " + n.host + " (" + n.id + ") out of service", onclick: () => drain(n) }
        : n.state === "unreachable" && !n.local
          ? { button: "Down", label: "Down " + n.host + " (" + n.id + "): remove the unreachable member", onclick: () => down(n) } : "",
    ], (n) => (n.local ? "local" : "") + (n.state === "unreachable" ? " gone" : ""));

    const terms = (c.terms || []).slice().reverse();
    rows("terms", terms, (x) => String(x.term), (x) => [x.term, { text: x.lead, cls: "mono" }, x.host || "—", clock(x.since)]);
    const duties = c.duties || [];
    $("duties-none").hidden = duties.length > 0;
    rows("duties", duties, (d) => d.name, (d) => {
      const r = d.last_run;
      return [d.name, d.schedule || "once per lead term",
        r ? { badge: r.outcome, reason: r.node + ", term " + r.term + ", " + dur(ms(r.dur)) + ", " + ago(r.at) + (r.error ? ": " + r.error : "") } : "not run yet",
        d.next_slot ? clock(d.next_slot) : "—"];
    });

    const unk = (v, what) => (v < 0 ? { text: "—", title: "the broker cannot tell " + what } : v);
    const unsupported = s.queues.length > 0 && s.queues.every((q) => !q.supported);
    $("queues-note").hidden = !unsupported && s.queues.length > 0;
    setText("queues-note", s.queues.length === 0 ? "This node watches no queues." :
      "The broker (" + (s.broker || "?") + ") cannot report queue counts; queues are listed without them.");
    rows("queues", s.queues, (q) => q.queue, (q) => q.supported && !q.error ? [q.queue, unk(q.depth, "the depth"), unk(q.in_flight, "what is in flight"),
      unk(q.dead_letters, "the dead letters"), q.oldest_age < 0 ? { text: "—", title: "the broker cannot tell" } : (q.depth === 0 && q.in_flight === 0 ? "empty" : dur(ms(q.oldest_age))),
      { text: q.note || "", cls: "wrap muted" }]
      : [q.queue, "—", "—", "—", "—", { text: q.error ? "cannot read: " + q.error : "the broker cannot say", cls: "wrap muted" }]);

    const f = s.flows;
    $("flows-off").hidden = !!f; $("flows-on").hidden = !f;
    if (f) {
      const filter = $("state-filter").value;
      const ex = f.recent.filter((x) => !filter || x.state === filter);
      setText("flow-counts", Object.keys(f.counts).sort().map((k) => f.counts[k] + " " + k.replace("_", "-")).join(" · ") + " (latest 100)");
      rows("executions", ex, (x) => x.execution, (x) => [
        { button: x.execution, link: true, label: "Show the steps of execution " + x.execution, onclick: () => showDetail(x.execution) },
        x.flow + (x.version ? " v" + x.version : ""), state(x.state), x.step || "—", { text: x.node || "—", cls: "mono" }, x.attempt || "—", ago(x.updated)]);
      $("exec-none").hidden = ex.length > 0;
      $("dead-none").hidden = f.dead_lettered.length > 0;
      rows("dead", f.dead_lettered, (x) => x.execution, (x) => [
        { button: x.execution, link: true, label: "Show the steps of execution " + x.execution, onclick: () => showDetail(x.execution) },
        x.flow, x.step || "—", { text: x.error || "—", cls: "wrap" }, ago(x.updated),
        { button: "Replay", label: "Replay execution " + x.execution, onclick: () => replay(x.execution) }]);
      if (detailID) {
        const x = f.recent.find((e) => e.execution === detailID);
        if (x && x.updated !== $("detail").dataset.updated) showDetail(detailID);
      }
    }
  }

  async function showDetail(id) {
    detailID = id;
    const r = await fetch("/api/flows/" + encodeURIComponent(id), { cache: "no-store" });
    const d = $("detail");
    d.hidden = false;
    if (!r.ok) { setText("detail-summary", "Not known to this node: " + r.status); return; }
    const x = await r.json();
    if (detailID !== id) return;
    d.dataset.updated = x.updated;
    setText("detail-title", "Execution " + id);
    setText("detail-summary", x.flow + " v" + x.version + " · " + x.state.replace("_", "-") + (x.error ? " · " + x.error : "") +
      " · started " + clock(x.started) + " · updated " + clock(x.updated));
    rows("steps", x.steps || [], (r) => r.seq + "/" + r.attempt + "/" + r.node + "/" + r.outcome + "/" + r.time, (r) => [
      r.seq, r.step, r.attempt || "—", { text: r.node || "—", cls: "mono" }, state(r.outcome), dur(ms(r.duration)), { text: r.error || "", cls: "wrap" }]);
  }

  // ---- actions ----
  function say(msg) { setText("action-result", msg); }
  async function post(url, body, what) {
    const h = { "Content-Type": "application/json" };
    const tok = sessionStorage.getItem(TOKEN);
    if (tok) h.Authorization = "Bearer " + tok;
    say(what + "…");
    let r;
    try { r = await fetch(url, { method: "POST", headers: h, body: JSON.stringify(body || {}) }); }
    catch (e) { say(what + " failed: " + e); return null; }
    const text = await r.text();
    if (r.status === 401 || r.status === 403) {
      say(what + " refused (" + r.status + "): enter the admin token below and try again.");
      $("token").focus();
      return null;
    }
    if (!r.ok) { say(what + " failed: " + r.status + " " + text.trim()); return null; }
    say(what + ": done. " + text.trim());
    return text;
  }
  function replay(id) { post("/api/executions/" + encodeURIComponent(id) + "/replay", {}, "Replay of " + id); }
  function drain(n) {
    if (!confirm("Take " + n.host + " (" + n.id + ") out of service? It drains: health answers 503, it hands over the lead and takes no new work.")) return;
    post("/api/members/" + encodeURIComponent(n.id) + "/drain", {}, "Drain of " + n.id);
  }
  // Down (POST /api/cluster/down) removes an unreachable member from the
  // membership at once; the node refuses a live member (409) or one it
  // does not know (404), and post shows its answer.
  function down(n) {
    if (!confirm("Down " + n.host + " (" + n.id + ")? It leaves the membership at once and stops counting toward the quorum; " +
      "if it comes back it rejoins as a new incarnation. Only for a member that is gone.")) return;
    post("/api/cluster/down", { node: n.id }, "Down of " + n.id);
  }
  $("cache-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const keys = $("cache-keys").value.split(",").map((k) => k.trim()).filter(Boolean);
    post("/api/cache/clear", { region: $("cache-region").value.trim(), keys: keys }, "Cache clear of " + $("cache-region").value.trim());
  });
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN, $("token").value);
    $("token").value = "";
    say("The token is kept in this tab until it closes.");
  });
  $("token-forget").onclick = () => { sessionStorage.removeItem(TOKEN); say("Token forgotten."); };
  $("detail-close").onclick = () => { detailID = ""; $("detail").hidden = true; };
  $("state-filter").onchange = () => snap && render(snap);

  // ---- live data ----
  function conn(live, text) {
    const e = $("conn");
    e.className = "conn " + (live ? "live" : "down");
    setText("conn", text);
  }
  function onData(txt) {
    lastMsg = Date.now();
    conn(true, "live");
    render(JSON.parse(txt));
  }
  // Polling, with the admin token: for a browser without EventSource, or a
  // node that protects reads (EventSource cannot send a header).
  const poll = async () => {
    const h = {}, tok = sessionStorage.getItem(TOKEN);
    if (tok) h.Authorization = "Bearer " + tok;
    try {
      const r = await fetch("/api/console", { cache: "no-store", headers: h });
      if (r.ok) onData(await r.text());
      else conn(false, r.status === 401 || r.status === 403 ? "this node protects reads: enter the admin token" : "node answers " + r.status);
    } catch (e) { conn(false, "node not answering"); }
    setTimeout(poll, 1000);
  };
  if (window.EventSource) {
    const es = new EventSource("/api/console/events");
    es.onmessage = (e) => onData(e.data);
    es.onerror = () => {
      if (!lastMsg) { es.close(); poll(); return; } // never got through: poll instead
      conn(false, "reconnecting to the node…");
    };
  } else poll();
  setInterval(() => { if (lastMsg && Date.now() - lastMsg > 5000) conn(false, "no update for " + dur(Date.now() - lastMsg)); }, 1000);
})();
