// The Surge console: signs in, follows /console/live (Server-Sent Events), browses events and
// starts projection rebuilds. No framework, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (n, digits = 0) => Number(n).toLocaleString("en", { maximumFractionDigits: digits });
const history = []; // [{accepted, refused}] per second, last 120

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", ...options });
  const body = res.status === 204 ? null : await res.json().catch(() => null);
  return { status: res.status, body };
}

function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function fillTable(id, rows) {
  const tbody = $(id).querySelector("tbody");
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    tr.append(...cells.map(([t, n]) => cell(t, n)));
    return tr;
  }));
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history.map((p) => Math.max(p.accepted, p.refused)));
  ctx.fillStyle = "#57606a";
  ctx.font = "12px system-ui";
  ctx.fillText(fmt(max, 1) + " / s", 4, 14);
  const line = (key, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((p, i) => {
      const x = pad + (i / 119) * (w - 2 * pad);
      const y = h - pad - (p[key] / max) * (h - 2 * pad);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  line("accepted", "#0b6bcb");
  line("refused", "#b3261e");
}

function render(s) {
  const refused = Object.values(s.refused_per_sec).reduce((a, b) => a + b, 0);
  $("orders-accepted").textContent = fmt(s.orders_accepted);
  $("orders-rate").textContent = fmt(s.orders_accepted_per_sec, 1);
  $("refused-rate").textContent = fmt(refused, 1);
  $("queue-depth").textContent = fmt(s.queue_depth);
  $("outbox-backlog").textContent = fmt(s.outbox_backlog);
  const latencies = Object.values(s.event_to_view_ms);
  $("event-to-view").textContent = latencies.length ? fmt(Math.max(...latencies), 1) + " ms" : "–";
  $("cache-hit").textContent = s.cache_hit_ratio == null ? "–" : fmt(s.cache_hit_ratio * 100, 1) + " %";
  fillTable("hot-skus", s.hot_skus.map((k) => [[k.sku], [fmt(k.available), true], [fmt(k.reserved), true], [fmt(k.sold), true], [fmt(k.buckets), true], [k.max_per_customer == null ? "none" : fmt(k.max_per_customer), true]]));
  fillTable("refusals", Object.keys(s.refused_total).map((r) => [[r], [fmt(s.refused_per_sec[r] || 0, 1), true], [fmt(s.refused_total[r]), true]]));
  const projections = new Set([...Object.keys(s.consumer_lag), ...Object.keys(s.event_to_view_ms)]);
  fillTable("lag", [...projections].map((p) => [[p], [fmt(s.consumer_lag[p] || 0), true],
    [s.event_to_view_ms[p] == null ? "–" : fmt(s.event_to_view_ms[p], 1), true]]));
  $("unreachable").textContent = s.unreachable.length ? "Metrics not reachable: " + s.unreachable.join(", ") : "";
  history.push({ accepted: s.orders_accepted_per_sec, refused });
  if (history.length > 120) history.shift();
  drawChart();
}

function follow() {
  const source = new EventSource("/console/live");
  source.addEventListener("snapshot", (e) => {
    $("live-status").textContent = "live";
    $("live-status").className = "status ok";
    render(JSON.parse(e.data));
  });
  source.onerror = () => {
    $("live-status").textContent = "reconnecting";
    $("live-status").className = "status";
  };
}

function showEvents(title, events) {
  $("events-heading").textContent = `${title}: ${events.length} event(s)`;
  $("events").replaceChildren(...events.map((e) => {
    const li = document.createElement("li");
    const head = document.createElement("div");
    head.textContent = `#${e.position} ${e.stream_id} v${e.version} ${e.event_type} (schema v${e.schema_version}) at ${e.occurred_at} by ${e.actor} `;
    const follow = document.createElement("button");
    follow.type = "button";
    follow.className = "link";
    follow.textContent = "correlation " + e.correlation_id;
    follow.addEventListener("click", () => loadCorrelation(e.correlation_id));
    head.append(follow);
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(e.payload, null, 2);
    li.append(head, pre);
    return li;
  }));
}

async function loadStream(id) {
  const { status, body } = await api(`/console/api/streams/${encodeURIComponent(id)}/events`);
  if (status !== 200) return showEvents(`${id}: ${body && body.detail || status}`, []);
  showEvents(id, body);
}

async function loadCorrelation(id) {
  const { status, body } = await api(`/console/api/correlations/${encodeURIComponent(id)}/events`);
  if (status === 200) showEvents(`correlation ${id}`, body);
}

async function loadProjections() {
  const { status, body } = await api("/console/api/projections");
  if (status !== 200) return;
  const tbody = $("projections").querySelector("tbody");
  tbody.replaceChildren(...body.map((p) => {
    const tr = document.createElement("tr");
    tr.append(cell(p.projection), cell(fmt(p.position), true), cell(fmt(p.offsets), true),
      cell(fmt(p.dead_letters), true), cell(p.last_error || "–"));
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Rebuild " + p.projection;
    button.addEventListener("click", () => startReplay(p.projection));
    td.append(button);
    tr.append(td);
    return tr;
  }));
}

async function watchReplay() {
  const { body } = await api("/console/api/replay");
  if (!body) return;
  const bar = $("replay-progress");
  bar.hidden = false;
  bar.max = Math.max(1, body.total);
  bar.value = body.done;
  const what = body.projection || "?";
  if (body.error) $("replay-status").textContent = `Rebuild of ${what} failed: ${body.error}`;
  else if (body.finished) $("replay-status").textContent = `Rebuilt ${body.switched.join(", ")}: ${fmt(body.done)} events folded, switched`;
  else $("replay-status").textContent = `Rebuilding ${what}: ${fmt(body.done)} of ${fmt(body.total)} events`;
  if (!body.finished) setTimeout(watchReplay, 500); else loadProjections();
}

async function startReplay(projection) {
  const { status, body } = await api("/console/api/projections/replay", {
    method: "POST",
    headers: { "content-type": "application/json", "x-surge-console": "1" },
    body: JSON.stringify({ projection }),
  });
  if (status !== 202) { $("replay-status").textContent = body && body.detail || `refused (${status})`; return; }
  watchReplay();
}

async function signIn(token) {
  const { status, body } = await api("/console/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (status !== 204) throw new Error(body && body.detail || `refused (${status})`);
}

async function start() {
  // A link may carry a token in its fragment (never sent to a server): trade it for a session.
  if (location.hash.startsWith("#token=")) {
    const token = decodeURIComponent(location.hash.slice(7));
    window.history.replaceState(null, "", location.pathname);
    await signIn(token).catch((e) => { $("login-error").textContent = e.message; });
  }
  const me = await api("/console/api/whoami");
  if (me.status !== 200) {
    $("login").hidden = false;
    if (me.status === 403) $("login-error").textContent = "This token's role may not use the console (needs admin or analyst).";
    return;
  }
  $("who").textContent = `${me.body.subject} (${me.body.role})`;
  $("sign-out").hidden = false;
  $("app").hidden = false;
  follow();
  loadProjections();
  setInterval(loadProjections, 5000);
  watchReplay();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try { await signIn($("token").value.trim()); location.reload(); }
    catch (err) { $("login-error").textContent = err.message; }
  });
  $("stream-form").addEventListener("submit", (e) => { e.preventDefault(); loadStream($("stream-id").value.trim()); });
  $("sign-out").addEventListener("click", async () => { await api("/console/session", { method: "DELETE" }); location.reload(); });
  start();
});
