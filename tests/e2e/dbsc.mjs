// DBSC in real Chromium (issue 26, in progress): logs in at BASE_URL (tollgate's [tls] front
// door on https://localhost:PORT, device_binding = "dbsc"), calls the API, waits past the
// bound cookie's lifetime (BOUND_SECS), calls again, and prints what DevTools reported
// (Network.deviceBoundSessionEventOccurred). Needs Debian's Chromium and the certificate's
// SPKI hash (SPKI: base64 SHA-256 of its SubjectPublicKeyInfo), which Chromium then treats as
// valid (../shared/notes/platform.md, "DBSC in real Chromium works here").
//
//   BASE_URL=https://localhost:18191 SPKI=... BOUND_SECS=10 node tests/e2e/dbsc.mjs
//
// Exits non-zero unless a registration and a refresh succeeded and both API calls got 200.
import { chromium } from 'playwright-core';

const base = process.env.BASE_URL;
const spki = process.env.SPKI;
const boundSecs = Number(process.env.BOUND_SECS || 10);
if (!base || !spki) {
  console.error('BASE_URL and SPKI are required');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--enable-features=DeviceBoundSessions:RefreshQuota/false,EnableBoundSessionCredentialsSoftwareKeysForManualTesting',
    `--ignore-certificate-errors-spki-list=${spki}`,
    '--no-sandbox',
  ],
});
let failed = false;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  const events = [];
  cdp.on('Network.deviceBoundSessionEventOccurred', (e) => events.push(e));
  await cdp.send('Network.enable');
  await cdp.send('Network.enableDeviceBoundSessions', { enable: true });
  await page.goto(`${base}/login?return_to=/`, { waitUntil: 'load', timeout: 20000 });
  const call = () =>
    page.evaluate(async () => {
      const r = await fetch('/api/dbsc', { headers: { 'x-csrf': '1' } });
      return r.status;
    });
  // Registration happens after the login's answer: wait for it (bounded).
  for (let i = 0; i < 50 && !events.some((e) => e.creationEventDetails); i++) {
    await page.waitForTimeout(100);
  }
  const first = await call();
  await page.waitForTimeout((boundSecs + 1) * 1000);
  const second = await call();
  const kinds = events.filter((e) => e.succeeded).map((e) => Object.keys(e).find((k) => k.endsWith('EventDetails')));
  // tollgate's cookies as a copy would take them (the replay test sends them from elsewhere).
  const cookies = (await context.cookies(base))
    .filter((c) => c.name.startsWith('__Host-tollgate'))
    .map((c) => `${c.name}=${c.value}`);
  console.log(JSON.stringify({ first, second, events: kinds, cookies }));
  failed = first !== 200 || second !== 200 || !kinds.includes('creationEventDetails') || !kinds.includes('refreshEventDetails');
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
