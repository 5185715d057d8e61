// crew serve's dashboard: reads the monitor stream (GET /api/events, docs/monitor.md) and draws
// it. Plain JavaScript, no build step; uPlot (window.uPlot) draws the charts.
//
// The stream is read with fetch() rather than EventSource: EventSource cannot send the
// Authorization header that a server with --auth-token-file asks for.
"use strict";

const API = "../api/"; // relative: works behind a path prefix too
const KEEP = 3600; // samples kept in the page: the server keeps an hour too
const QUIET_MS = 25000; // the stream pings every 10 s; this long without a byte means it is dead
const TOKEN_KEY = "crew.token";

const $ = (selector) => document.querySelector(selector);

// ---- formatting -------------------------------------------------------------------------------

function fmtNumber(v, digits = 1) {
  if (v == null || Number.isNaN(v)) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en");
  return v.toFixed(Number.isInteger(v) ? 0 : digits);
}

function fmtSeconds(s) {
  if (s == null) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}

function fmtBytes(b) {
  if (b == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < units.length - 1) {
    b /= 1024;
    i++;
  }
  return (i === 0 ? b.toFixed(0) : b.toFixed(1)) + " " + units[i];
}

function fmtDuration(s) {
  if (s == null) return "–";
  s = Math.floor(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " m " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " m";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 6: "SIGABRT", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM" };

// last_exit: {signal, code, reason, time}; reason is signal, exit, memory, timeout or stop.
function fmtExit(exit, now) {
  if (!exit) return "–";
  const how = exit.signal != null
    ? (SIGNALS[exit.signal] || "signal") + " (" + exit.signal + ")"
    : "code " + exit.code;
  const why = { memory: "memory cap", timeout: "task timeout", stop: "stopped" }[exit.reason];
  const ago = exit.time != null && now != null ? ", " + fmtDuration(Math.max(0, now - exit.time)) + " ago" : "";
  return how + (why ? " — " + why : "") + ago;
}

// ---- token ------------------------------------------------------------------------------------

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let tokenWaiters = [];

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

// Resolves once the person has typed a token (after a 401).
function askToken() {
  $("#token").hidden = false;
  $("#token-value").focus();
  setStatus("token", "token needed");
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

$("#token").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token-value").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").hidden = true;
  const waiters = tokenWaiters;
  tokenWaiters = [];
  waiters.forEach((resolve) => resolve());
});

// ---- the stream -------------------------------------------------------------------------------

function setStatus(state, text) {
  const el = $("#status");
  el.dataset.state = state;
  el.textContent = text;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reads text/event-stream from a fetch() body and calls onEvent(type, data, id) for each event,
// onAny() for every chunk (pings included). Returns when the stream ends.
async function readEvents(body, onEvent, onAny, onRetry) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    onAny();
    buffer += value;
    let nl;
    while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(type, data.join("\n"), id);
        type = "message";
        data = [];
        id = null;
        continue;
      }
      if (line.startsWith(":")) continue; // a comment: the heartbeat
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
    }
  }
}

// The newest seq received, sent as Last-Event-ID on a reconnect. A seq is the Unix second of its
// sample on every server, so the stream resumes after a restart or on another cluster worker too.
let lastSeq = null;

// One stream for the page, reconnected for ever: after a drop, after `retry` ms and then backing
// off up to 30 s; Last-Event-ID makes the server send only the samples this page missed.
async function stream() {
  let retry = 1000;
  let delay = retry;
  for (;;) {
    const controller = new AbortController();
    let watchdog = null;
    const alive = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => controller.abort(), QUIET_MS);
    };
    try {
      const headers = authHeaders();
      if (lastSeq != null) headers["Last-Event-ID"] = String(lastSeq);
      alive();
      const response = await fetch(API + "events", { headers, signal: controller.signal, cache: "no-store" });
      if (response.status === 401) {
        clearTimeout(watchdog);
        await askToken();
        delay = retry;
        continue;
      }
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setStatus("live", "live");
      await readEvents(response.body, (type, data, id) => {
        delay = retry;
        if (type === "history") addHistory(JSON.parse(data));
        else if (type === "sample") addSample(JSON.parse(data), id);
      }, alive, (ms) => {
        retry = ms;
      });
    } catch (e) {
      if (e.name !== "AbortError") console.debug("crew dashboard: stream:", e.message);
    } finally {
      clearTimeout(watchdog);
    }
    setStatus("reconnecting", "reconnecting");
    await sleep(delay);
    delay = Math.min(Math.max(delay * 2, retry), 30000);
  }
}

// ---- samples ----------------------------------------------------------------------------------

let samples = []; // compact samples, by seq, oldest first
let latest = null; // the newest full sample

function compact(s) {
  return {
    seq: s.seq,
    time: s.time,
    totals: s.totals,
    workers: (s.workers || []).map((w) => ({
      id: w.id, cpu_percent: w.cpu_percent, rss_bytes: w.rss_bytes, pss_bytes: w.pss_bytes,
    })),
  };
}

function keep(list) {
  const bySeq = new Map(samples.map((s) => [s.seq, s]));
  for (const s of list) bySeq.set(s.seq, s);
  samples = [...bySeq.values()].sort((a, b) => a.seq - b.seq).slice(-KEEP);
  if (samples.length) lastSeq = Math.max(lastSeq ?? -1, samples[samples.length - 1].seq);
}

function addHistory(list) {
  keep(list);
  // The newest compact sample has the totals: the tiles need not wait for the next full one.
  if (!latest && samples.length) drawTiles(samples[samples.length - 1]);
  drawCharts();
}

function addSample(sample, id) {
  latest = sample;
  keep([compact(sample)]);
  if (id != null && /^\d+$/.test(id)) lastSeq = Math.max(lastSeq ?? -1, Number(id));
  drawTiles(sample);
  drawCharts();
  drawWorkers();
  drawTasks();
}

// ---- header and tiles -------------------------------------------------------------------------

const TILES = [
  ["rps", "requests/s", (t) => t.requests_per_s, fmtNumber],
  ["eps", "errors/s", (t) => t.errors_per_s, fmtNumber],
  ["p50", "latency p50", (t) => t.p50_s, fmtSeconds],
  ["p99", "latency p99", (t) => t.p99_s, fmtSeconds],
  ["tps", "tasks/s", (t) => t.tasks_per_s, fmtNumber],
  ["queued", "queued", (t) => t.queued, fmtNumber],
  ["busy", "busy / workers", (t) => t.busy, (v, t) => fmtNumber(v) + " / " + fmtNumber(t.workers)],
  ["wait", "queue wait p99", (t) => t.wait_p99_s, fmtSeconds],
  ["cpu", "CPU", (t) => t.cpu_percent, (v) => fmtNumber(v) + " %"],
  ["rss", "RSS", (t) => t.rss_bytes, fmtBytes],
  ["pss", "PSS", (t) => t.pss_bytes, fmtBytes],
  ["restarts", "restarts", (t) => t.restarts, fmtNumber],
  ["lag", "event-loop lag", (t) => t.lag_s, fmtSeconds],
  ["util", "loop utilization", (t) => t.utilization, (v) => (v == null ? "–" : (v * 100).toFixed(0) + " %")],
  ["conns", "connections", (t) => t.connections, fmtNumber],
];

function buildTiles() {
  const root = $("#tiles");
  for (const [key, label] of TILES) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.innerHTML = '<div class="label"></div><div class="value">–</div>';
    tile.querySelector(".label").textContent = label;
    tile.querySelector(".value").id = key;
    root.append(tile);
  }
}

function drawTiles(sample) {
  const t = sample.totals || {};
  for (const [key, , get, fmt] of TILES) {
    const el = document.getElementById(key);
    const v = get(t);
    el.textContent = fmt(v, t);
    el.dataset.value = v == null ? "" : String(v);
  }
  if (!sample.server) return;
  const s = sample.server;
  const parts = ["v" + s.version, s.isolation + " isolation", "backend " + s.backend, "pid " + s.pid,
    "up " + fmtDuration(s.uptime_s)];
  if (s.cluster) parts.splice(1, 0, "cluster of " + s.cluster + " (serving: worker " + s.worker + ")");
  $("#server").textContent = parts.join(" · ");
  const reload = $("#reload");
  reload.disabled = !s.cluster;
  reload.title = s.cluster ? "Rolling reload of the cluster's workers" : "not a cluster (crew serve --cluster N)";
}

// ---- charts -----------------------------------------------------------------------------------

const PALETTE = ["#2f81f7", "#f0883e", "#3fb950", "#db61a2", "#a371f7", "#e3b341", "#39c5cf", "#f85149"];
const ms = (v) => (v == null ? null : v * 1000);

// Charts of totals: [title, series [label, value from totals]..., y value formatter].
const TOTAL_CHARTS = [
  ["Requests / s", [["requests", (t) => t.requests_per_s], ["errors (5xx)", (t) => t.errors_per_s]], fmtNumber],
  ["Latency (ms)", [["p50", (t) => ms(t.p50_s)], ["p99", (t) => ms(t.p99_s)]], (v) => fmtNumber(v, 2)],
  ["Queue", [["queued", (t) => t.queued], ["busy", (t) => t.busy]], fmtNumber],
  ["Queue wait p99 (ms)", [["wait p99", (t) => ms(t.wait_p99_s)]], (v) => fmtNumber(v, 2)],
  ["Restarts (total)", [["restarts", (t) => t.restarts]], fmtNumber],
  ["Event loop", [["lag (ms)", (t) => ms(t.lag_s)], ["utilization (%)", (t) => (t.utilization == null ? null : t.utilization * 100)]],
    (v) => fmtNumber(v, 2)],
];
// Charts with one series per worker row.
const mib = (v) => (v == null ? null : v / 1048576); // MiB on the axis: round ticks
const WORKER_CHARTS = [
  ["CPU % per process", (w) => w.cpu_percent, fmtNumber],
  ["RSS per process (MiB)", (w) => mib(w.rss_bytes), fmtNumber],
  ["PSS per process (MiB)", (w) => mib(w.pss_bytes), fmtNumber],
];

const charts = []; // {el, plot, key (series labels), title, format}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function chartBox(title) {
  const el = document.createElement("div");
  el.className = "chart";
  const h = document.createElement("h3");
  h.textContent = title;
  el.append(h);
  $("#charts").append(el);
  return el;
}

function makePlot(box, labels, format, data) {
  const axis = { stroke: css("--muted"), grid: { stroke: css("--grid") }, ticks: { stroke: css("--grid") } };
  const opts = {
    width: Math.max(200, box.clientWidth - 16),
    height: 170,
    cursor: { drag: { x: false, y: false } },
    legend: { live: false },
    scales: { y: { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } },
    axes: [axis, { ...axis, size: 76, values: (u, vals) => vals.map((v) => format(v)) }],
    series: [
      {},
      ...labels.map((label, i) => ({
        label,
        stroke: PALETTE[i % PALETTE.length],
        width: 1.5,
        spanGaps: false,
        value: (u, v) => format(v),
      })),
    ],
  };
  return new uPlot(opts, data, box);
}

// Draws (or updates) every chart with the samples of the chosen window.
function drawCharts() {
  if (!samples.length) return;
  const span = Number($("#window").value);
  const newest = samples[samples.length - 1].time;
  const shown = samples.filter((s) => s.time > newest - span);
  const x = shown.map((s) => s.time);
  const sets = TOTAL_CHARTS.map(([title, series, format]) => ({
    title, format, labels: series.map(([label]) => label),
    data: [x, ...series.map(([, get]) => shown.map((s) => get(s.totals || {}) ?? null))],
  }));
  const ids = [...new Set(shown.flatMap((s) => (s.workers || []).map((w) => w.id)))].sort(
    (a, b) => a.localeCompare(b, "en", { numeric: true }));
  for (const [title, get, format] of WORKER_CHARTS) {
    const data = [x, ...ids.map((id) => shown.map((s) => {
      const w = (s.workers || []).find((r) => r.id === id);
      return w ? get(w) ?? null : null;
    }))];
    sets.push({ title, format, labels: ids, data });
  }
  sets.forEach((set, i) => {
    let c = charts[i];
    if (!c) {
      c = charts[i] = { el: chartBox(set.title), plot: null, key: "" };
    }
    const key = set.labels.join("\n");
    if (c.plot && c.key === key) {
      c.plot.setData(set.data);
    } else {
      // A new set of series (a worker came or went): uPlot's series are fixed, so a new plot.
      if (c.plot) c.plot.destroy();
      c.plot = makePlot(c.el, set.labels, set.format, set.data);
      c.key = key;
    }
  });
  $("#charts").dataset.points = String(x.length);
}

new ResizeObserver(() => {
  for (const c of charts) {
    if (c.plot) c.plot.setSize({ width: Math.max(200, c.el.clientWidth - 16), height: 170 });
  }
}).observe($("#charts"));
$("#window").addEventListener("change", drawCharts);

// ---- tables -----------------------------------------------------------------------------------

// Rows are kept and updated in place (keyed by id), so a button is never replaced under the
// pointer and an opened log stays open.
const workerRows = new Map();

function cell(tr, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  tr.append(td);
  return td;
}

function workerRow(w) {
  let row = workerRows.get(w.id);
  if (row) return row;
  const tr = document.createElement("tr");
  tr.dataset.worker = w.id;
  const c = {};
  for (const [key, cls] of [["id"], ["kind"], ["pid", "num"], ["state"], ["uptime", "num"],
    ["tasks", "num"], ["errors", "num"], ["restarts", "num"], ["cpu", "num"], ["rss", "num"],
    ["pss", "num"], ["exit", "exit"], ["actions", "actions"]]) {
    c[key] = cell(tr, cls);
  }
  // A single server cannot restart itself (409): its own row, "server", has no restart button.
  if (w.id !== "server") {
    const restart = document.createElement("button");
    restart.type = "button";
    restart.textContent = "restart";
    restart.title = "Stop this process gracefully; it is replaced";
    restart.addEventListener("click", () => act("workers/" + encodeURIComponent(w.id) + "/restart", "restart " + w.id));
    c.actions.append(restart);
  }
  if (w.kind === "task") {
    const heap = document.createElement("button");
    heap.type = "button";
    heap.textContent = "heap profile";
    heap.title = "Write a heap profile of this process (crew serve --heap-profiling)";
    heap.addEventListener("click", () => act("workers/" + encodeURIComponent(w.id) + "/heap", "heap profile of " + w.id));
    c.actions.append(heap);
  }
  const logTr = document.createElement("tr");
  logTr.className = "log";
  logTr.dataset.logFor = w.id;
  const logTd = document.createElement("td");
  logTd.colSpan = 13;
  logTd.innerHTML = "<details><summary></summary><pre></pre></details>";
  logTr.append(logTd);
  row = { tr, logTr, c, summary: logTd.querySelector("summary"), pre: logTd.querySelector("pre") };
  workerRows.set(w.id, row);
  return row;
}

function drawWorkers() {
  const tbody = $("#workers tbody");
  const now = latest.time;
  const seen = new Set();
  for (const w of latest.workers || []) {
    const row = workerRow(w);
    seen.add(w.id);
    const c = row.c;
    c.id.textContent = w.id;
    c.kind.textContent = w.kind;
    c.pid.textContent = w.pid ?? "–";
    c.state.textContent = w.state + (w.leak_suspected ? " (leak suspected)" : "");
    c.uptime.textContent = fmtDuration(w.uptime_s);
    c.tasks.textContent = fmtNumber(w.tasks);
    c.errors.textContent = fmtNumber(w.errors);
    c.restarts.textContent = fmtNumber(w.restarts);
    c.cpu.textContent = w.cpu_percent == null ? "–" : fmtNumber(w.cpu_percent) + " %";
    c.rss.textContent = fmtBytes(w.rss_bytes);
    c.pss.textContent = fmtBytes(w.pss_bytes);
    c.exit.textContent = fmtExit(w.last_exit, now);
    c.exit.dataset.reason = w.last_exit ? w.last_exit.reason : "";
    c.exit.dataset.signal = w.last_exit && w.last_exit.signal != null ? String(w.last_exit.signal) : "";
    c.exit.dataset.code = w.last_exit && w.last_exit.code != null ? String(w.last_exit.code) : "";
    const log = w.log || [];
    row.summary.textContent = log.length ? "last " + log.length + " log lines of " + w.id : "no log lines from " + w.id;
    row.pre.textContent = log.join("\n");
  }
  for (const [id, row] of workerRows) {
    if (!seen.has(id)) workerRows.delete(id);
  }
  // A stable order: by server, its own row first, then its task workers by number (a replaced
  // worker keeps its place).
  const sorted = [...(latest.workers || [])].sort((a, b) =>
    (a.server ?? 0) - (b.server ?? 0) || (a.kind === "server" ? 0 : 1) - (b.kind === "server" ? 0 : 1) ||
    a.id.localeCompare(b.id, "en", { numeric: true }));
  order(tbody, sorted.flatMap((w) => [workerRows.get(w.id).tr, workerRows.get(w.id).logTr]));
}

// Puts `rows` in `tbody` in that order, touching the DOM only when it differs: a moved row would
// lose a click in progress.
function order(tbody, rows) {
  const now = [...tbody.children];
  if (now.length === rows.length && now.every((tr, i) => tr === rows[i])) return;
  tbody.replaceChildren(...rows);
}

const taskRows = new Map();

function drawTasks() {
  const tbody = $("#tasks tbody");
  const seen = new Set();
  for (const t of latest.tasks || []) {
    let row = taskRows.get(t.name);
    if (!row) {
      const tr = document.createElement("tr");
      tr.dataset.task = t.name;
      row = { tr, c: {} };
      for (const [key, cls] of [["name"], ["count", "num"], ["errors", "num"], ["per_s", "num"],
        ["p50", "num"], ["p99", "num"]]) {
        row.c[key] = cell(tr, cls);
      }
      taskRows.set(t.name, row);
    }
    seen.add(t.name);
    row.c.name.textContent = t.name;
    row.c.count.textContent = fmtNumber(t.count);
    row.c.errors.textContent = fmtNumber(t.errors);
    row.c.per_s.textContent = fmtNumber(t.per_s);
    row.c.p50.textContent = fmtSeconds(t.p50_s);
    row.c.p99.textContent = fmtSeconds(t.p99_s);
  }
  for (const name of taskRows.keys()) {
    if (!seen.has(name)) taskRows.delete(name);
  }
  order(tbody, (latest.tasks || []).map((t) => taskRows.get(t.name).tr));
}

// ---- actions ----------------------------------------------------------------------------------

function answer(text, ok) {
  const el = document.createElement("div");
  el.className = ok ? "" : "error";
  el.textContent = new Date().toLocaleTimeString() + " — " + text;
  const root = $("#answers");
  root.prepend(el);
  while (root.children.length > 5) root.lastChild.remove();
}

// POST /api/<path>: shows the server's answer (its error message, or the heap profile's path).
async function act(path, what) {
  for (;;) {
    let response;
    try {
      response = await fetch(API + path, { method: "POST", headers: authHeaders() });
    } catch (e) {
      return answer(what + ": " + e.message, false);
    }
    if (response.status === 401) {
      await askToken();
      continue;
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // an empty or non-JSON answer: its status says enough
    }
    let text = what + ": " + response.status + " " + response.statusText;
    if (body && body.error) text += " — " + body.error.message;
    else if (body && body.path) text += " — written to " + body.path;
    return answer(text, response.ok);
  }
}

$("#reload").addEventListener("click", () => act("cluster/reload", "reload the cluster"));

buildTiles();
stream();
