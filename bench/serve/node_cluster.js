// Node's cluster hello world with 2 workers: the anchor for `crew serve --cluster 2`'s /healthz.
'use strict';
const cluster = require('cluster');
const http = require('http');
const port = Number(process.env.PORT || 3001);
if (cluster.isPrimary) {
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{"status":"ok"}');
  }).listen(port, '127.0.0.1');
}
