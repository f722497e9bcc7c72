// The two applications tollgate fronts in the local demo and the browser test, with no
// dependencies beyond Node.js:
//
//   - an echo API (API_PORT, default 9000) that answers every request with what it received:
//     method, path, whether a bearer token arrived (its length and a short fingerprint, never
//     the token itself), the names of the cookies that arrived, and, when USERINFO_URL is set,
//     what the provider's userinfo endpoint says about the token (proof it is a real one);
//     A WebSocket handshake on any API path is accepted and answered with one text message
//     saying whether a bearer token arrived with the handshake (then the server closes);
//   - the single-page app (SPA_PORT, default 9001): the static files in ./spa, no build step.
//
// Both listen on 127.0.0.1 only. Stop with Ctrl-C or SIGTERM.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const apiPort = Number(process.env.API_PORT || 9000);
const spaPort = Number(process.env.SPA_PORT || 9001);
const userinfoUrl = process.env.USERINFO_URL;

const json = (res, status, body) => {
  const data = JSON.stringify(body, null, 2);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
};

async function askUserinfo(authorization) {
  if (!userinfoUrl) return undefined;
  try {
    const r = await fetch(userinfoUrl, { headers: { authorization }, signal: AbortSignal.timeout(5000) });
    const body = await r.json().catch(() => ({}));
    return r.ok ? { status: r.status, sub: body.sub, name: body.name } : { status: r.status, error: body.error };
  } catch (err) {
    return { error: String(err.message || err) };
  }
}

const api = http.createServer(async (req, res) => {
  // Drain the body so keep-alive works; its size is reported.
  let bodyBytes = 0;
  for await (const chunk of req) bodyBytes += chunk.length;
  const authorization = req.headers.authorization || '';
  const bearer = authorization.startsWith('Bearer ') ? authorization.slice(7) : null;
  json(res, 200, {
    message: bearer ? 'Hello from the API: a bearer token arrived.' : 'Hello from the API: no bearer token arrived.',
    method: req.method,
    path: req.url,
    body_bytes: bodyBytes,
    bearer_token: bearer
      ? {
          received: true,
          length: bearer.length,
          // A fingerprint, so two calls can be compared without showing the token.
          sha256_prefix: crypto.createHash('sha256').update(bearer).digest('hex').slice(0, 12),
        }
      : { received: false },
    // Names only. tollgate removes its own cookies; others for this host pass (in the demo, the
    // provider's, since it runs on the same 127.0.0.1 and cookies ignore the port).
    cookies_received: (req.headers.cookie || '')
      .split(';')
      .map((c) => c.split('=')[0].trim())
      .filter(Boolean),
    request_id: req.headers['x-request-id'] || null,
    userinfo: bearer ? await askUserinfo(authorization) : undefined,
  });
});

// WebSocket (RFC 6455), just enough for the demo: accept the handshake, send one unmasked
// text frame, close.
api.on('upgrade', (req, socket) => {
  const key = req.headers['sec-websocket-key'];
  if ((req.headers.upgrade || '').toLowerCase() !== 'websocket' || !key) {
    socket.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n');
    return;
  }
  const accept = crypto
    .createHash('sha1')
    .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n' +
      `sec-websocket-accept: ${accept}\r\n\r\n`,
  );
  const authorization = req.headers.authorization || '';
  const payload = Buffer.from(
    JSON.stringify({ websocket: true, bearer: authorization.startsWith('Bearer '), path: req.url }).slice(0, 125),
  );
  socket.write(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
  socket.on('error', () => {});
  // Leave the close to the client (it closes after the message).
  setTimeout(() => socket.destroy(), 10_000).unref();
});

const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css' };
const spaDir = path.join(here, 'spa');
const spa = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://spa');
  const name = url.pathname === '/' ? 'index.html' : url.pathname.slice(1);
  // Only the files in spa/, by plain name: no directories, no traversal.
  if (!/^[a-z0-9_-]+\.(html|js|css)$/.test(name) || !fs.existsSync(path.join(spaDir, name))) {
    res.writeHead(404, { 'content-type': 'text/plain' });
    return res.end('not found');
  }
  const data = fs.readFileSync(path.join(spaDir, name));
  res.writeHead(200, {
    'content-type': types[path.extname(name)],
    'content-length': data.length,
    'cache-control': 'no-store',
  });
  res.end(data);
});

api.listen(apiPort, '127.0.0.1', () => console.log(`echo API on http://127.0.0.1:${apiPort}`));
spa.listen(spaPort, '127.0.0.1', () => console.log(`SPA on http://127.0.0.1:${spaPort}`));
const stop = () => {
  api.close();
  spa.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
