// The installer page: sign in with an installer token, find a SIM, bind it to the device's IMEI, then
// watch the device come online. Plain script, no build step; talks only to the admin API beside it.
'use strict';

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = 'simbridge.installerToken';
const POLL_MS = 3000;

const state = { token: sessionStorage.getItem(TOKEN_KEY), sim: null, boundAt: 0, firstMessageAt: null, poll: 0 };

// ---- identifiers (the same rules as the server: bridge/identity/ids.ts) ----

function luhnDigit(digits) {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 0) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return (10 - (sum % 10)) % 10;
}

/** What was typed or scanned → { imei } or { error } in words an installer can act on. */
function checkImei(raw) {
  const s = raw.replace(/[\s\-/.]/g, '');
  if (!s) return { error: 'Enter the IMEI from the device label.' };
  if (!/^\d+$/.test(s)) return { error: 'An IMEI has digits only. Check for letters or symbols.' };
  if (s.length === 16) return { imei: s.slice(0, 14) + luhnDigit(s.slice(0, 14)), note: 'This is an IMEISV (16 digits): the IMEI was worked out from it.' };
  if (s.length !== 15) return { error: `An IMEI has 15 digits; this has ${s.length}. Check for a missing or extra digit.` };
  const check = luhnDigit(s.slice(0, 14));
  if (Number(s[14]) === check) return { imei: s };
  if (s[14] === '0') return { imei: s.slice(0, 14) + check };
  return { error: 'Wrong digits: the last digit (check digit) does not match the others. One digit was probably misread; compare with the label again.' };
}

/** A whole ICCID can be checked before asking the server. */
function iccidProblem(s) {
  if (/^89\d{17,18}$/.test(s) && luhnDigit(s.slice(0, -1)) !== Number(s.at(-1))) {
    return 'Wrong digits: the ICCID check digit does not match. Re-read the number on the SIM card.';
  }
  return null;
}

// ---- API ----

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { authorization: `Bearer ${state.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => null);
  if (res.status === 401 && path !== '/v1/whoami') {
    signOut('Your sign-in has expired or the token was revoked. Sign in again.');
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ---- view helpers ----

function show(id, visible) {
  $(id).hidden = !visible;
}

function say(id, text, kind) {
  const el = $(id);
  el.textContent = text || '';
  el.className = `msg ${text ? kind || 'info' : ''}`;
}

function invalid(input, bad) {
  input.setAttribute('aria-invalid', bad ? 'true' : 'false');
}

const ago = (iso) => {
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : new Date(iso).toLocaleString();
};

function tail(s, n = 6) {
  return s ? `…${s.slice(-n)}` : '';
}

// ---- sign in ----

async function signIn(token) {
  state.token = token;
  try {
    const me = await api('GET', '/v1/whoami');
    sessionStorage.setItem(TOKEN_KEY, token);
    $('who').textContent = `${me.name} (${me.role})`;
    show('who-box', true);
    show('signin-step', false);
    show('find-step', true);
    say('signin-msg', '');
    $('q').focus();
  } catch (err) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    const msg =
      err.status === 401 ? 'This token is not valid. Check it, or ask an operator for a new one.'
      : err.status === 429 ? 'Too many failed sign-ins from this device. Wait a few minutes and try again.'
      : `Cannot sign in: ${err.message}`;
    say('signin-msg', msg, 'error');
    invalid($('token'), true);
  }
}

function signOut(message) {
  stopPolling();
  state.token = null;
  state.sim = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ['find-step', 'sim-step', 'status-step', 'who-box']) show(id, false);
  show('signin-step', true);
  $('token').value = '';
  say('signin-msg', message || '', message ? 'info' : '');
}

// ---- find ----

async function find(raw) {
  const q = raw.replace(/\s/g, '');
  invalid($('q'), false);
  $('results').replaceChildren();
  if (!/^\d{4,20}$/.test(q)) {
    invalid($('q'), true);
    return say('find-msg', 'Enter at least the last 4 digits of the IMSI or ICCID (digits only).', 'error');
  }
  const problem = iccidProblem(q);
  if (problem) {
    invalid($('q'), true);
    return say('find-msg', problem, 'error');
  }
  say('find-msg', 'Searching…', 'info');
  try {
    const { items } = await api('GET', `/v1/lookup?q=${encodeURIComponent(q)}`);
    if (items.length === 0) return say('find-msg', `No SIM matches ${q}. Check the digits, or ask an operator whether this SIM was imported.`, 'error');
    if (items.length === 1) {
      say('find-msg', '');
      return selectSim(items[0]);
    }
    say('find-msg', `${items.length} SIMs match; pick yours:`, 'info');
    for (const sim of items) {
      const li = document.createElement('li');
      const b = document.createElement('button');
      b.type = 'button';
      b.innerHTML = `<b></b><br><small></small>`;
      b.querySelector('b').textContent = `IMSI ${sim.imsi}`;
      b.querySelector('small').textContent = `ICCID ${sim.iccid || '—'} · ${sim.group} · ${sim.status}`;
      b.addEventListener('click', () => selectSim(sim));
      li.append(b);
      $('results').append(li);
    }
  } catch (err) {
    if (err.status !== 401) say('find-msg', `Search failed: ${err.message}`, 'error');
  }
}

function selectSim(sim) {
  state.sim = sim;
  $('results').replaceChildren();
  show('status-step', false);
  stopPolling();
  renderFacts(sim);
  show('sim-step', true);
  show('force', false);
  say('bind-msg', '');
  invalid($('imei'), false);
  $('imei').value = '';
  const terminated = sim.status === 'terminated';
  show('bind-form', !terminated);
  if (terminated) say('sim-msg', 'This SIM is terminated and cannot be used. Take another SIM.', 'error');
  else if (sim.status === 'suspended') say('sim-msg', 'This SIM is suspended: the device will not connect until an operator reactivates it. You can still bind it.', 'info');
  else if (sim.boundImei) say('sim-msg', `Already bound to IMEI ${sim.boundImei}. Enter the same IMEI to confirm, or another to swap the device.`, 'info');
  else say('sim-msg', '');
  if (!terminated) $('imei').focus();
}

function renderFacts(sim) {
  const dl = $('sim-facts');
  dl.replaceChildren();
  const row = (label, value) => {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    if (value instanceof Node) dd.append(value);
    else dd.textContent = value;
    dl.append(dt, dd);
  };
  const badge = document.createElement('span');
  badge.className = `badge ${sim.status}`;
  badge.textContent = sim.status;
  row('IMSI', sim.imsi);
  row('ICCID', sim.iccid || '—');
  row('Group', sim.group);
  row('Status', badge);
  row('Bound IMEI', sim.boundImei || 'not bound');
}

// ---- bind ----

async function bind(force) {
  const input = $('imei');
  const checked = checkImei(input.value);
  if (checked.error) {
    invalid(input, true);
    show('force', false);
    return say('bind-msg', checked.error, 'error');
  }
  invalid(input, false);
  input.value = checked.imei;
  $('bind').disabled = true;
  try {
    const r = await api('PUT', `/v1/sims/${state.sim.imsi}/imei`, { imei: checked.imei, force });
    state.sim = r.sim;
    state.boundAt = Date.now();
    state.firstMessageAt = null;
    renderFacts(r.sim);
    show('force', false);
    say('sim-msg', '');
    say('bind-msg', r.outcome === 'unchanged' ? `Already bound to ${r.sim.boundImei}: nothing to change.` : `Bound to IMEI ${r.sim.boundImei}.`, 'ok');
    startPolling();
  } catch (err) {
    if (err.status === 409 && err.body.error === 'imei_conflict') {
      say('bind-msg', `This SIM is already bound to another device (IMEI ${err.body.boundImei}). If you are replacing that device, tap "Replace the binding"; otherwise use another SIM.`, 'error');
      show('force', true);
    } else if (err.status === 409 && err.body.error === 'sim_terminated') {
      say('bind-msg', 'This SIM is terminated and cannot be bound. Take another SIM.', 'error');
    } else if (err.status === 400) {
      invalid(input, true);
      say('bind-msg', err.body.message || 'The IMEI is not valid.', 'error');
    } else if (err.status !== 401) {
      say('bind-msg', `Binding failed: ${err.message}`, 'error');
    }
  } finally {
    $('bind').disabled = false;
  }
}

// ---- live status ----

function startPolling() {
  stopPolling();
  show('status-step', true);
  const tick = async () => {
    try {
      render(await api('GET', `/v1/sims/${state.sim.imsi}`));
    } catch (err) {
      if (err.status === 401) return;
      say('status-msg', `Cannot read the device status (${err.message}); retrying…`, 'error');
    }
    if (state.sim) state.poll = setTimeout(tick, POLL_MS);
  };
  tick();
}

function stopPolling() {
  clearTimeout(state.poll);
  state.poll = 0;
}

function check(id, done, text, detail) {
  const li = $(id);
  li.className = done === true ? 'done' : done === 'bad' ? 'bad' : '';
  li.textContent = text;
  if (detail) {
    const small = document.createElement('small');
    small.textContent = detail;
    li.append(small);
  }
}

function render(view) {
  const sim = view.sim;
  check('chk-bound', Boolean(sim.boundImei), 'IMEI bound', sim.boundImei || 'not bound');
  const session = view.network[0];
  const onlineDetail = session
    ? `network: ${session.rat || 'attached'}, IP ${session.ip}, since ${ago(session.since)}`
    : view.connected ? 'connected now'
    : view.online && view.lastMessageAt ? `active ${ago(view.lastMessageAt)}`
    : 'waiting: switch the device on';
  check('chk-online', view.online, view.online ? 'Device online' : 'Device not online yet', onlineDetail);
  // Remember the first message once seen: the page should not go back to "waiting".
  if (view.lastMessageAt && !state.firstMessageAt) state.firstMessageAt = view.lastMessageAt;
  check('chk-message', Boolean(state.firstMessageAt), state.firstMessageAt ? 'First message received' : 'No message yet', state.firstMessageAt ? `last message ${ago(view.lastMessageAt || state.firstMessageAt)}` : 'waiting for the device to send');
  const cert = view.certificate;
  check('chk-cert', cert.state === 'ready' ? true : cert.lastError ? 'bad' : false, cert.state === 'ready' ? 'Certificate issued' : 'Certificate not issued yet', cert.state === 'ready' ? (cert.notAfter ? `valid until ${new Date(cert.notAfter).toLocaleDateString()}` : 'ready') : cert.lastError ? `retrying: ${cert.lastError}` : cert.state === 'vending' ? 'being issued' : 'issued after the first message');

  // "Done" only once a message of the device reached IoT Core: received and stored is not yet working.
  const delivered = Boolean(view.deliveredAt);
  check('chk-delivered', delivered, delivered ? 'Delivered to IoT Core' : 'Not delivered to IoT Core yet', delivered ? `first message accepted ${ago(view.deliveredAt)}` : `${view.outbox.depth} message(s) waiting upstream`);

  // A device presenting another IMEI after the bind means the wrong number was bound.
  const mismatch = view.recentEvents.find((e) => e.kind === 'imei_mismatch' && Date.parse(e.at) >= state.boundAt - 1000);
  if (mismatch) say('status-msg', `The device reported IMEI ${mismatch.detail.seen}, not the bound ${mismatch.detail.bound}. Check the IMEI and bind again.`, 'error');
  else if (sim.status !== 'active') say('status-msg', `The SIM is ${sim.status}: the device cannot connect.`, 'error');
  else if (delivered) say('status-msg', 'Done: the device is working. Its first message reached IoT Core.', 'ok');
  else say('status-msg', waitingFor(view), 'info');
  $('status-detail').textContent = `Updated ${new Date().toLocaleTimeString()} · ${view.outbox.depth} message(s) waiting upstream`;
}

/** What the page still waits for before "Done", in the order it happens. */
function waitingFor(view) {
  const cert = view.certificate;
  if (!state.firstMessageAt) return view.online ? 'Waiting for the device to send its first message.' : 'Waiting for the device to come online and send its first message.';
  if (cert.state !== 'ready') {
    return cert.lastError
      ? `Waiting for the device's certificate: issuing it failed (${cert.lastError}) and is being retried. The message is stored on the gateway.`
      : 'Waiting for the device\'s certificate to be issued. The message is stored on the gateway.';
  }
  const session = view.upstream.state === 'connected' ? '' : ` (connection to IoT Core: ${view.upstream.state})`;
  return `Waiting for IoT Core to accept the first message${session}. Do not leave yet.`;
}

// ---- scanning (where the browser has BarcodeDetector) ----

async function setUpScanner() {
  if (!('BarcodeDetector' in window) || !navigator.mediaDevices) return;
  try {
    const formats = await window.BarcodeDetector.getSupportedFormats();
    const wanted = ['code_128', 'code_39', 'ean_13', 'qr_code', 'data_matrix'].filter((f) => formats.includes(f));
    if (!wanted.length) return;
    const detector = new window.BarcodeDetector({ formats: wanted });
    show('scan', true);
    $('scan').addEventListener('click', () => scan(detector));
  } catch {
    /* no scanner: typing works */
  }
}

async function scan(detector) {
  const video = $('camera');
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: 'environment' } });
  } catch {
    return say('bind-msg', 'The camera is not available (it needs permission, and HTTPS). Type the IMEI instead.', 'error');
  }
  video.srcObject = stream;
  show('camera', true);
  await video.play();
  say('bind-msg', 'Point the camera at the IMEI barcode…', 'info');
  const stop = () => {
    stream.getTracks().forEach((t) => t.stop());
    show('camera', false);
  };
  const deadline = Date.now() + 30_000;
  const look = async () => {
    if (Date.now() > deadline) {
      stop();
      return say('bind-msg', 'No IMEI barcode found. Type the IMEI instead.', 'error');
    }
    for (const code of await detector.detect(video).catch(() => [])) {
      for (const digits of code.rawValue.match(/\d{15,16}/g) || []) {
        const checked = checkImei(digits);
        if (checked.imei) {
          stop();
          $('imei').value = checked.imei;
          invalid($('imei'), false);
          return say('bind-msg', `Scanned IMEI ${checked.imei}. Check it against the label, then bind.`, 'info');
        }
      }
    }
    setTimeout(look, 200);
  };
  look();
}

// ---- wiring ----

$('signin-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const token = $('token').value.trim();
  if (!token) return say('signin-msg', 'Paste your installer token.', 'error');
  signIn(token);
});
$('signout').addEventListener('click', () => signOut());
$('find-form').addEventListener('submit', (e) => {
  e.preventDefault();
  find($('q').value);
});
$('bind-form').addEventListener('submit', (e) => {
  e.preventDefault();
  bind(false);
});
$('force').addEventListener('click', () => bind(true));
$('imei').addEventListener('input', () => {
  invalid($('imei'), false);
  show('force', false);
});
$('next-sim').addEventListener('click', () => {
  stopPolling();
  state.sim = null;
  for (const id of ['sim-step', 'status-step']) show(id, false);
  $('q').value = '';
  say('find-msg', '');
  $('q').focus();
});

setUpScanner();
if (state.token) signIn(state.token);
