// BullMQ's half of bench/redis/run.sh: the workloads of crew_queue_bench.cpp, same payload,
// same `key value` output (see there). BullMQ and ioredis come from bench/node/package.json via
// NODE_PATH.
//
//   node bench/redis/bullmq_bench.js --port PORT [--quick] [--only WORKLOAD]
//
// --only runs one workload (after the backlog it needs), as crew_queue_bench's --only.
'use strict';
const { Queue, QueueEvents, Worker } = require('bullmq');
const Redis = require('ioredis');

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const port = Number(args[args.indexOf('--port') + 1]);
const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : '';
const wanted = (workload) => only === '' || only === workload;
if (!(port > 0) || only === undefined) {
  console.error('usage: bullmq_bench.js --port PORT [--quick] [--only WORKLOAD]');
  process.exit(64);
}
const JOBS = quick ? 2000 : 20000;
const ROUND_TRIPS = quick ? 500 : 5000;
// addBulk in batches of this many jobs, one batch after the other.
const BATCH = 1000;
const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
const PAYLOAD = 'payload-0123456789';

const emit = (key, value) => process.stdout.write(`${key} ${value.toFixed(3)}\n`);
const now = () => performance.now() / 1000;

// Redis's own account of its work (INFO commandstats and cpu), on a connection of its own.
const probe = new Redis(connection);
async function redisWork() {
  const calls = new Map();
  for (const m of (await probe.info('commandstats')).matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
    calls.set(m[1], Number(m[2]));
  }
  let cpu = 0;
  for (const m of (await probe.info('cpu')).matchAll(/^used_cpu_(?:sys|user):([\d.]+)/gm)) {
    cpu += Number(m[1]);
  }
  return { calls, cpu };
}
async function measure(workload, jobs, body) {
  const before = await redisWork();
  await body();
  const after = await redisWork();
  let total = 0;
  for (const [name, calls] of [...after.calls].sort()) {
    const delta = calls - (before.calls.get(name) || 0);
    if (name === 'info' || delta === 0) continue;
    total += delta;
    emit(`${workload}.cmd.${name}`, delta / jobs);
  }
  emit(`${workload}.calls`, total / jobs);
  emit(`${workload}.cpu_us`, ((after.cpu - before.cpu) * 1e6) / jobs);
}

// Results removed on completion, as crew's JobOptions::retain = 0.
const job = (i) => ({ name: 'noop', data: { n: i, s: PAYLOAD }, opts: { removeOnComplete: true } });

async function enqueueOne(workload, name) {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  let s = 0;
  await measure(workload, JOBS, async () => {
    const t = now();
    for (let i = 0; i < JOBS; ++i) {
      const j = job(i);
      await queue.add(j.name, j.data, j.opts);
    }
    s = now() - t;
  });
  emit(`${workload}.rate`, JOBS / s);
  await queue.close();
}

// Adds JOBS jobs with addBulk, BATCH at a time; returns the seconds it took.
async function addBatches(queue) {
  const t = now();
  for (let i = 0; i < JOBS; i += BATCH) {
    const batch = [];
    for (let k = i; k < Math.min(i + BATCH, JOBS); ++k) batch.push(job(k));
    await queue.addBulk(batch);
  }
  return now() - t;
}

async function enqueueBulk(workload, name) {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  let s = 0;
  await measure(workload, JOBS, async () => {
    s = await addBatches(queue);
  });
  emit(`${workload}.rate`, JOBS / s);
  await queue.close();
}

// A backlog for a processing run, not measured.
async function fill(name) {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  await addBatches(queue);
  await queue.close();
}

// Times a worker through JOBS waiting jobs, from its construction to the last 'completed'.
async function processAll(workload, name, concurrency) {
  let s = 0;
  await measure(workload, JOBS, async () => {
    const t = now();
    const worker = new Worker(name, async (j) => j.data.n, { connection, concurrency });
    let done = 0;
    let progressed = now();
    await new Promise((resolve, reject) => {
      const stalled = setInterval(() => {
        if (now() - progressed > 30) reject(new Error(`${workload}: ${done} of ${JOBS} completed`));
      }, 1000);
      const finish = (error) => {
        clearInterval(stalled);
        if (error) reject(error);
        else resolve();
      };
      worker.on('completed', () => {
        progressed = now();
        if (++done === JOBS) finish();
      });
      worker.on('failed', (_, error) => finish(error));
      worker.on('error', finish);
    });
    s = now() - t;
    await worker.close();
  });
  emit(`${workload}.rate`, JOBS / s);
}

// A producer that waits for each result before it adds the next; one worker in this process
// (concurrency 1). The wait is QueueEvents' 'completed' event, the notification
// job.waitUntilFinished() waits for; waitUntilFinished itself also asks Redis whether the job
// has finished already, and with removeOnComplete a job removed before that question reads as
// missing and the wait fails.
async function endToEnd(name) {
  const queue = new Queue(name, { connection });
  const events = new QueueEvents(name, { connection });
  const worker = new Worker(name, async (j) => j.data.n, { connection, concurrency: 1 });
  await Promise.all([queue.waitUntilReady(), events.waitUntilReady(), worker.waitUntilReady()]);
  const waiting = new Map();  // job id -> resolve
  const early = new Map();    // job id -> result that came before add() returned
  events.on('completed', ({ jobId, returnvalue }) => {
    const resolve = waiting.get(jobId);
    if (resolve) {
      waiting.delete(jobId);
      resolve(returnvalue);
    } else {
      early.set(jobId, returnvalue);
    }
  });
  const once = async (i) => {
    const j = job(i);
    const { id } = await queue.add(j.name, j.data, j.opts);
    const result = early.has(id)
      ? early.get(id)
      : await new Promise((resolve) => waiting.set(id, resolve));
    early.delete(id);
    if (result !== i) throw new Error(`e2e: job ${id} returned ${result}, expected ${i}`);
  };
  for (let i = 0; i < 100; ++i) await once(i);
  const us = [];
  await measure('e2e', ROUND_TRIPS, async () => {
    for (let i = 0; i < ROUND_TRIPS; ++i) {
      const t = performance.now();
      await once(i);
      us.push((performance.now() - t) * 1000);
    }
  });
  us.sort((a, b) => a - b);
  emit('e2e.p50_us', us[Math.floor(us.length / 2)]);
  emit('e2e.p99_us', us[Math.floor((us.length * 99) / 100)]);
  await worker.close();
  await events.close();
  await queue.close();
}

(async () => {
  // The jobs each enqueue leaves behind are the next processing run's backlog.
  if (wanted('enqueue_one')) await enqueueOne('enqueue_one', 'one');
  if (only === 'process_c1') await fill('one');
  if (wanted('process_c1')) await processAll('process_c1', 'one', 1);
  if (wanted('enqueue_bulk')) await enqueueBulk('enqueue_bulk', 'bulk');
  if (only === 'process_c32') await fill('bulk');
  if (wanted('process_c32')) await processAll('process_c32', 'bulk', 32);
  if (wanted('e2e')) await endToEnd('e2e');
  probe.disconnect();
})().catch((error) => {
  console.error(`bullmq_bench: ${error.stack || error}`);
  process.exit(1);
});
