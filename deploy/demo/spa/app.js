// The demo SPA. Every call to tollgate's session-bound endpoints carries the CSRF header
// ("x-csrf: 1"): cross-site pages cannot set it, so tollgate refuses requests without it.
const CSRF = { 'x-csrf': '1' };
const $ = (id) => document.getElementById(id);

function show(el, text, state) {
  el.textContent = text;
  el.dataset.state = state;
}

async function loadSession() {
  $('cookies').textContent = JSON.stringify(document.cookie);
  let r;
  try {
    r = await fetch('/session', { headers: CSRF });
  } catch (err) {
    show($('user'), `Could not reach tollgate: ${err.message}`, 'error');
    return;
  }
  if (r.status === 200) {
    const s = await r.json();
    show($('user'), `Logged in as ${s.name || s.sub}${s.email ? ` <${s.email}>` : ''}`, 'ok');
    $('login').hidden = true;
    $('logout').hidden = false;
  } else if (r.status === 401) {
    show($('user'), 'Not logged in.', 'anonymous');
    $('login').hidden = false;
    $('logout').hidden = true;
  } else {
    show($('user'), `GET /session answered ${r.status}`, 'error');
  }
}

async function callApi(path) {
  show($('api-status'), 'Calling …', 'busy');
  $('api-result').textContent = '';
  try {
    const r = await fetch(path, { headers: CSRF });
    const text = await r.text();
    if (r.status === 401) {
      // Step-up (RFC 9470): this API needs a stronger or more recent login. tollgate's link
      // asks the provider for it; come back here afterwards.
      let problem = {};
      try {
        problem = JSON.parse(text);
      } catch (_) {
        // not JSON
      }
      if (problem.error === 'step_up_required') {
        show($('api-status'), 'Step-up required: signing in again …', 'busy');
        const sep = problem.login.includes('?') ? '&' : '?';
        window.location.assign(`${problem.login}${sep}return_to=${encodeURIComponent(location.pathname)}`);
        return;
      }
    }
    let body = text;
    try {
      body = JSON.stringify(JSON.parse(text), null, 2);
    } catch (_) {
      // not JSON: show as is
    }
    $('api-result').textContent = body;
    show($('api-status'), `HTTP ${r.status}`, r.ok ? 'ok' : 'error');
  } catch (err) {
    show($('api-status'), `Request failed: ${err.message}`, 'error');
  }
}

async function logout() {
  // POST with the CSRF header; tollgate answers with a URL to visit (/logout/continue, which
  // sends the browser on to the provider's logout without the ID token ever reaching script).
  const r = await fetch('/logout', { method: 'POST', headers: { ...CSRF, accept: 'application/json' } });
  if (r.ok) {
    const { logout_url: next } = await r.json();
    window.location.assign(next || '/');
  } else {
    show($('user'), `Logout answered ${r.status}`, 'error');
  }
}

$('call-api').addEventListener('click', () => callApi('/api/hello'));
$('pay').addEventListener('click', () => callApi('/api/payments'));
$('logout').addEventListener('click', logout);
loadSession();
