// The round-robin load balancer of `./deploy/demo/run.sh --replicas N`: it listens where the
// browser expects tollgate (BALANCER_PORT, default 8080, on 127.0.0.1) and hands each request
// to the next of the REPLICAS (comma-separated host:port list) in turn. No dependencies beyond
// Node.js.
//
// Per request, not per connection: a browser keeps one or two keep-alive connections open and
// sends everything over them, so a plain TCP round robin (node:net, one replica per
// connection) would pin a whole visit to one replica and hide what the replicas share. Here
// every HTTP request goes to the next replica over a fresh upstream connection (no pooling, so
// "the next replica" is literal), and a WebSocket upgrade is handed to the next replica too and
// then relayed byte for byte both ways.
//
// It adds nothing: no X-Forwarded-* or other headers, the Host header untouched (tollgate sees
// the public origin, 127.0.0.1:8080, as it would behind a real balancer). It only drops the
// hop-by-hop headers (Connection and those it names, Keep-Alive, ...) that belong to each
// connection. One line per request says which replica answered. Stop with Ctrl-C or SIGTERM.
import http from 'node:http';
import net from 'node:net';

const port = Number(process.env.BALANCER_PORT || 8080);
const replicas = (process.env.REPLICAS || '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean)
  .map((s, i) => {
    const at = s.lastIndexOf(':');
    return { n: i + 1, host: s.slice(0, at), port: Number(s.slice(at + 1)), name: s };
  });
if (replicas.length === 0 || replicas.some((r) => !r.host || !r.port)) {
  console.error('REPLICAS must list the replicas as host:port,host:port,...');
  process.exit(2);
}

let turn = 0;
const next = () => replicas[turn++ % replicas.length];
const log = (line) => console.log(`[balancer] ${line}`);

// RFC 9110 section 7.6.1: these describe one connection and are not forwarded.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade'];
function forwardable(rawHeaders, keepUpgrade) {
  const named = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].toLowerCase() === 'connection') {
      named.push(...rawHeaders[i + 1].split(',').map((s) => s.trim().toLowerCase()));
    }
  }
  const drop = new Set([...HOP_BY_HOP, ...named]);
  if (keepUpgrade) {
    drop.delete('connection');
    drop.delete('upgrade');
  }
  const out = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (!drop.has(rawHeaders[i].toLowerCase())) out.push(rawHeaders[i], rawHeaders[i + 1]);
  }
  return out;
}

const server = http.createServer((req, res) => {
  const r = next();
  // agent: false: a new connection for this request alone, closed after it.
  const up = http.request({
    host: r.host,
    port: r.port,
    method: req.method,
    path: req.url,
    headers: forwardable(req.rawHeaders, false),
    agent: false,
  });
  up.on('response', (answer) => {
    log(`${req.method} ${req.url.split('?')[0]} -> replica ${r.n} (${r.name}): ${answer.statusCode}`);
    res.writeHead(answer.statusCode, answer.statusMessage, forwardable(answer.rawHeaders, false));
    answer.pipe(res);
  });
  up.on('error', (err) => {
    log(`${req.method} ${req.url.split('?')[0]} -> replica ${r.n} (${r.name}): ${err.message}`);
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`balancer: replica ${r.n} (${r.name}) failed: ${err.message}\n`);
    } else {
      res.destroy();
    }
  });
  res.on('close', () => {
    if (!res.writableFinished) up.destroy();
  });
  req.pipe(up);
});

// WebSocket (and any other upgrade): replay the request as received to the next replica, then
// relay the bytes, the replica's 101 included, in both directions.
server.on('upgrade', (req, socket, head) => {
  const r = next();
  log(`${req.method} ${req.url.split('?')[0]} (upgrade) -> replica ${r.n} (${r.name})`);
  const up = net.connect(r.port, r.host, () => {
    const headers = forwardable(req.rawHeaders, true);
    let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`;
    for (let i = 0; i < headers.length; i += 2) text += `${headers[i]}: ${headers[i + 1]}\r\n`;
    up.write(`${text}\r\n`);
    if (head && head.length) up.write(head);
    up.pipe(socket);
    socket.pipe(up);
  });
  const close = () => {
    up.destroy();
    socket.destroy();
  };
  up.on('error', (err) => {
    log(`upgrade -> replica ${r.n} (${r.name}): ${err.message}`);
    close();
  });
  socket.on('error', close);
  up.on('close', close);
  socket.on('close', close);
});

server.listen(port, '127.0.0.1', () =>
  log(`round robin on http://127.0.0.1:${port} over ${replicas.map((r) => r.name).join(', ')}`),
);
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
