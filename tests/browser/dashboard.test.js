// crew serve's dashboard in a real browser: Debian's headless Chromium driven by puppeteer-core.
// Starts the built `crew serve --isolation process --workers 2` on a free port and checks, on
// the page at /dashboard:
//   - no console errors and no page errors;
//   - the requests/s figure rises above 0 while requests run;
//   - a task worker killed with SIGKILL shows signal 9 in the worker table within 2 s of the kill;
//   - a page opened after 30 s of uptime draws at least 30 points at once;
// and writes a screenshot of the page under load.
//
//   node dashboard.test.js <crew> <screenshot.png>   (NODE_PATH: where puppeteer-core is)
"use strict";

const assert = require("node:assert/strict");
const { spawn } = require("node:child_process");
const puppeteer = require("puppeteer-core");

const [crew, screenshot] = process.argv.slice(2);
if (!crew || !screenshot) {
  console.error("usage: node dashboard.test.js <crew> <screenshot.png>");
  process.exit(64);
}
const CHROMIUM = process.env.CREW_CHROMIUM || "/usr/bin/chromium";
const KILL_BOUND_MS = 2000; // issue 17: a killed worker appears with its signal within 2 s

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Polls `check` (async, returns a truthy value when done) every 50 ms for at most `ms`.
async function waitFor(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

// `crew serve` on port 0: the port is read from its "listening on" line.
async function startServer() {
  const server = spawn(crew, ["serve", "--isolation", "process", "--workers", "2", "--port", "0",
    "--log-format", "off"], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  server.stdout.on("data", (d) => (output += d));
  server.stderr.on("data", (d) => (output += d));
  let exited = null;
  server.on("exit", (code, signal) => (exited = { code, signal }));
  const port = await waitFor("crew serve's 'listening on' line", 30000, () => {
    if (exited) throw new Error(`crew serve exited (${JSON.stringify(exited)}): ${output}`);
    const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(output);
    return m && Number(m[1]);
  });
  return { server, port, output: () => output, exited: () => exited };
}

// Requests in a loop, a few at a time, until stop() (bounded: at most 3 minutes).
function startLoad(base) {
  let running = true;
  let sent = 0;
  const until = Date.now() + 180000;
  const one = async () => {
    while (running && Date.now() < until) {
      const r = await fetch(base + "/v1/tasks/fib", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: '{"args": [25]}',
      }).catch(() => null);
      if (r) await r.arrayBuffer();
      sent++;
    }
  };
  const loops = Array.from({ length: 4 }, one);
  return { stop: async () => { running = false; await Promise.all(loops); return sent; } };
}

async function openDashboard(browser, base, errors) {
  const page = await browser.newPage();
  await page.setViewport({ width: 1440, height: 1300 });
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`console: ${m.text()} (${m.location().url || "?"})`);
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // The stream's request is cut when the page closes: not an error of the page.
    if (!r.url().endsWith("/api/events")) errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });
  const response = await page.goto(base + "/dashboard", { waitUntil: "load" });
  // 304 the second time: the browser revalidates its copy with the page's ETag.
  assert.ok([200, 304].includes(response.status()), `GET /dashboard/: ${response.status()}`);
  assert.equal(new URL(page.url()).pathname, "/dashboard/");
  await waitFor("the stream to go live", 20000,
    () => page.$eval("#status", (el) => el.dataset.state === "live"));
  return page;
}

async function main() {
  const started = Date.now();
  const { server, port, output, exited } = await startServer();
  const base = `http://127.0.0.1:${port}`;
  const errors = [];
  let browser = null;
  let load = null;
  try {
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // Chromium's sandbox refuses to run as root.
      args: [...(process.getuid() === 0 ? ["--no-sandbox"] : []), "--disable-gpu",
        "--disable-dev-shm-usage"],
    });
    const page = await openDashboard(browser, base, errors);

    // The requests/s tile moves above 0 while load runs.
    load = startLoad(base);
    const rps = await waitFor("requests/s above 0 on the page", 20000, async () => {
      const v = Number(await page.$eval("#rps", (el) => el.dataset.value || "0"));
      return v > 0 && v;
    });
    console.log(`requests/s on the page: ${rps}`);
    await waitFor("the fib row in the task table", 10000, () =>
      page.$eval("#tasks", (t) => Number(t.querySelector('tr[data-task="fib"] td:nth-child(2)')
        ?.textContent.replace(/,/g, "") || 0) > 0));

    // A task worker killed with SIGKILL: its row shows signal 9.
    const monitor = await (await fetch(base + "/api/monitor")).json();
    const victim = monitor.latest.workers.find((w) => w.kind === "task" && w.pid > 0);
    assert.ok(victim, `a task worker in /api/monitor: ${JSON.stringify(monitor.latest.workers)}`);
    const killed = Date.now();
    process.kill(victim.pid, "SIGKILL");
    const selector = `tr[data-worker="${victim.id}"] td.exit`;
    await waitFor(`signal 9 in ${victim.id}'s row`, 20000, () =>
      page.$eval(selector, (td) => td.dataset.signal === "9").catch(() => false)).catch(async (e) => {
      // Say whether the page or the server is short of it.
      const now = await (await fetch(base + "/api/monitor")).json();
      const row = now.latest.workers.find((w) => w.id === victim.id);
      throw new Error(`${e.message}; /api/monitor's row now: ${JSON.stringify(row)}`);
    });
    const shownAfter = Date.now() - killed;
    const text = await page.$eval(selector, (td) => td.textContent);
    console.log(`${victim.id} (pid ${victim.pid}) killed: shown after ${shownAfter} ms as "${text}"`);
    assert.match(text, /SIGKILL \(9\)/);
    assert.ok(shownAfter <= KILL_BOUND_MS, `the kill showed after ${shownAfter} ms, over ${KILL_BOUND_MS} ms`);

    // A page opened after 30 s of uptime draws at least 30 points at once.
    await waitFor("30 s of uptime", 60000, () => Date.now() - started > 31000);
    const later = await openDashboard(browser, base, errors);
    const points = await waitFor("30 points on the charts", 10000, async () => {
      const n = Number(await later.$eval("#charts", (el) => el.dataset.points));
      return n >= 30 && n;
    });
    console.log(`points on a page opened after ${Math.round((Date.now() - started) / 1000)} s: ${points}`);
    const charts = await later.$$eval("#charts .uplot", (list) => list.length);
    assert.ok(charts >= 9, `${charts} charts drawn`);

    // Under load still, so that the picture shows moving numbers; once the tables are filled.
    await waitFor("the worker table on the later page", 10000,
      () => later.$$eval("#workers tr[data-worker]", (rows) => rows.length >= 3));
    await later.screenshot({ path: screenshot, fullPage: true });
    console.log(`screenshot: ${screenshot}`);
    const sent = await load.stop();
    load = null;
    console.log(`requests sent: ${sent}`);
    assert.deepEqual(errors, [], "console or page errors");
  } finally {
    if (load) await load.stop();
    if (browser) await browser.close();
    server.kill("SIGTERM");
    // It drains for at most 10 s (--shutdown-timeout-ms); a hang is killed, and reported below.
    await waitFor("crew serve to exit", 30000, () => exited() !== null).catch(async () => {
      server.kill("SIGKILL");
      await waitFor("crew serve to exit after SIGKILL", 10000, () => exited() !== null);
    });
  }
  assert.deepEqual(exited(), { code: 0, signal: null }, `crew serve's exit after SIGTERM: ${output()}`);
}

main().then(
  () => console.log("dashboard.test.js: ok"),
  (e) => {
    console.error(`dashboard.test.js: FAIL: ${e.stack || e}`);
    process.exit(1);
  });
