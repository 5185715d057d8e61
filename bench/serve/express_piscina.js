// The seed's example, for real: an Express server whose /compute hands the heavy loop to a
// Piscina pool (2 threads), so the event loop stays free for /healthz. With INLINE=1 the same
// loop runs on the event loop instead (the contrast in benchmark 2).
'use strict';
const path = require('path');
const express = require('express');
const Piscina = require('piscina');

const port = Number(process.env.PORT || 3000);
const inline = process.env.INLINE === '1';
const piscina = new Piscina({ filename: path.join(__dirname, 'compute_worker.js'),
                              minThreads: 2, maxThreads: 2 });
const sumRange = (n) => { let s = 0; for (let i = 0; i < n; i++) s += i; return s; };

const app = express();
app.use(express.json());
app.get('/healthz', (req, res) => res.json({ status: 'ok' }));
app.post('/compute', async (req, res) => {
  const n = Number((req.body.args || [100000])[0]);
  const started = process.hrtime.bigint();
  const result = inline ? sumRange(n) : await piscina.run(n);
  res.json({ result, duration_ms: Number(process.hrtime.bigint() - started) / 1e6 });
});
app.listen(port, '127.0.0.1', () => console.log(`listening on http://127.0.0.1:${port}`));
