// Node.js anchors for crew_process_compare: workerpool in process mode and Piscina, on the same
// workloads. Prints "key value" lines that crew_process_compare reads.
'use strict';
const path = require('path');
const { performance } = require('perf_hooks');
const workerpool = require('workerpool');
const Piscina = require('piscina');

const quick = process.argv.includes('--quick');
const percentile = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

async function main() {
  const rounds = quick ? 300 : 2000;
  const tiny = quick ? 2000 : 10000;

  // workerpool, process workers: no-op round trip and tiny-task throughput.
  {
    const pool = workerpool.pool(path.join(__dirname, 'wp_worker.js'),
                                 { workerType: 'process', minWorkers: 2, maxWorkers: 2 });
    for (let i = 0; i < 50; ++i) await pool.exec('noop', []);
    const lat = [];
    for (let i = 0; i < rounds; ++i) {
      const t = performance.now();
      await pool.exec('noop', []);
      lat.push((performance.now() - t) * 1000);
    }
    console.log(`workerpool_rt_p50_us ${percentile(lat, 50)}`);
    console.log(`workerpool_rt_p99_us ${percentile(lat, 99)}`);
    const t = performance.now();
    const all = [];
    for (let i = 0; i < tiny; ++i) all.push(pool.exec('noop', []));
    await Promise.all(all);
    console.log(`workerpool_tiny_per_s ${tiny / ((performance.now() - t) / 1000)}`);
    await pool.terminate();
  }

  // workerpool, process workers: spawn to first answer.
  {
    const times = [];
    for (let i = 0; i < (quick ? 3 : 10); ++i) {
      const t = performance.now();
      const pool = workerpool.pool(path.join(__dirname, 'wp_worker.js'),
                                   { workerType: 'process', maxWorkers: 1 });
      await pool.exec('noop', []);
      times.push(performance.now() - t);
      await pool.terminate();
    }
    console.log(`workerpool_spawn_ms ${percentile(times, 50)}`);
  }

  // Piscina (worker threads): 64 MiB to a worker and back with a transferList.
  {
    const piscina = new Piscina({ filename: path.join(__dirname, 'piscina_worker.js'),
                                  minThreads: 2, maxThreads: 2 });
    let buf = new Uint8Array(64 << 20);
    buf.fill(7);
    for (let i = 0; i < 3; ++i) {
      buf = new Uint8Array(await piscina.run({ buf: buf.buffer }, { transferList: [buf.buffer] }));
    }
    const lat = [];
    for (let i = 0; i < (quick ? 5 : 20); ++i) {
      const t = performance.now();
      buf = new Uint8Array(await piscina.run({ buf: buf.buffer }, { transferList: [buf.buffer] }));
      lat.push(performance.now() - t);
    }
    if (buf[buf.length - 1] !== 7) throw new Error('piscina corrupted the buffer');
    console.log(`piscina_64mib_ms ${percentile(lat, 50)}`);
    const rt = [];
    for (let i = 0; i < rounds; ++i) {
      const t = performance.now();
      await piscina.run({ noop: true });
      rt.push((performance.now() - t) * 1000);
    }
    console.log(`piscina_rt_p50_us ${percentile(rt, 50)}`);
    await piscina.destroy();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
