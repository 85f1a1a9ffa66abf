// The console's only way to the server: the same JSON API the CLI uses, on the node that served
// the page. The token lives in sessionStorage (gone with the tab) and travels as a header, never
// in a URL.
const TOKEN_KEY = 'taskworker.token';

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || '';
export const setToken = (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY));

// The header names the API uses for blocking queries and paging (api.HeaderIndex and the paging
// headers; older servers send no paging headers and the console pages with ?after=).
export const H_INDEX = 'X-Taskworker-Index';
export const H_NEXT = 'X-Taskworker-Next';
export const H_TOTAL = 'X-Taskworker-Total';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};
export const setUnauthorizedHandler = (f) => { onUnauthorized = f; };

function headers(extra) {
  const h = { Accept: 'application/json', ...extra };
  const t = getToken();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

async function failure(res) {
  let body = {};
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  const err = new ApiError(res.status, body.code || 'http_' + res.status, body.error || res.statusText);
  if (res.status === 401) onUnauthorized(err);
  return err;
}

// request returns {data, headers} or throws an ApiError.
export async function request(method, path, { body, signal } = {}) {
  const init = { method, headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}), signal, cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  return { data: text ? JSON.parse(text) : null, headers: res.headers };
}

export const get = (path, opts) => request('GET', path, opts);
export const post = (path, body, opts) => request('POST', path, { ...opts, body });

// follow streams a task's output lines (JSON lines) to onLine until the task ends or signal aborts.
export async function follow(id, onLine, signal) {
  const res = await fetch('/v1/tasks/' + encodeURIComponent(id) + '/logs?follow=true', { headers: headers(), signal, cache: 'no-store' });
  if (!res.ok) throw await failure(res);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
}

export const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// watch keeps one blocking query open on path (?index=N&wait=30s) and calls onData with each
// reply, until signal aborts. minGap spaces replies so that a busy cluster, whose index moves all
// the time, costs at most one request per minGap per open view. onError sees failures; the loop
// backs off and goes on.
export async function watch(path, { signal, onData, onError, minGap = 1000 }) {
  let index = '';
  while (!signal.aborted) {
    const started = Date.now();
    try {
      const sep = path.includes('?') ? '&' : '?';
      const url = index ? `${path}${sep}index=${index}&wait=30s` : path;
      const { data, headers } = await get(url, { signal });
      index = headers.get(H_INDEX) || '';
      onData(data, headers);
      if (!index) await sleep(2000, signal); // an old server without blocking queries: poll slowly
    } catch (e) {
      if (signal.aborted) return;
      onError?.(e);
      await sleep(e.status === 401 ? 60000 : 2000, signal);
    }
    const gap = minGap - (Date.now() - started);
    if (gap > 0) await sleep(gap, signal);
  }
}
