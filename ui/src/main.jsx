// taskworker's web console: a small single-page app over the public HTTP API, served by every
// node at /ui/. Routes live in the URL fragment (#/tasks, #/task/ID, ...) so the server needs
// nothing but the static files.
import { render, createContext } from 'preact';
import { useState, useEffect, useContext, useRef, useMemo, useCallback } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { RetryButton, FinalNote, PurgePanel } from './uniq.jsx';
import { TraceField } from './trace.jsx';
import { get, post, follow, watch, getToken, setToken, setUnauthorizedHandler, H_NEXT, H_TOTAL, ApiError } from './api.js';
import { Schedules } from './schedules.jsx';
import { Workflows, Workflow } from './workflows.jsx';

const Auth = createContext(null);

// ---- helpers ----------------------------------------------------------------------------------

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const fmtTime = (s) => (s ? new Date(s).toLocaleString() : '');
const fmtClock = (s) => (s ? new Date(s).toLocaleTimeString() : '');
function fmtDur(ms) {
  if (ms == null || ms < 0) return '';
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}
const pretty = (v) => JSON.stringify(v, null, 2);
// count reads "1 task", "2 tasks": n with the noun in the number it takes.
const count = (n, one, many = one + 's') => n + ' ' + (n === 1 ? one : many);
const short = (id) => (id && id.length > 12 ? id.slice(0, 6) + '…' + id.slice(-6) : id);

function parseHash() {
  const h = location.hash.replace(/^#\/?/, '');
  const [path, qs] = h.split('?');
  const parts = path.split('/').filter(Boolean);
  return { page: parts[0] || 'cluster', arg: parts[1] ? decodeURIComponent(parts[1]) : '', params: new URLSearchParams(qs || '') };
}
const go = (hash) => { location.hash = hash; };

function useRoute() {
  const [r, setR] = useState(parseHash());
  useEffect(() => {
    const f = () => setR(parseHash());
    addEventListener('hashchange', f);
    return () => removeEventListener('hashchange', f);
  }, []);
  return r;
}

// useWatch keeps one blocking query open for the component's life (restarted when path changes).
function useWatch(path, minGap = 1000) {
  const [state, setState] = useState({ data: null, headers: null, error: null });
  useEffect(() => {
    if (!path) return undefined;
    const ac = new AbortController();
    setState({ data: null, headers: null, error: null });
    watch(path, {
      signal: ac.signal, minGap,
      onData: (data, headers) => setState({ data, headers, error: null }),
      onError: (error) => setState((s) => ({ ...s, error })),
    });
    return () => ac.abort();
  }, [path]);
  return state;
}

function ErrorBox({ error }) {
  if (!error) return null;
  let text = error.message || String(error);
  if (error.status === 403) text = 'Not allowed: ' + text;
  return <p class="error" role="alert" data-code={error.code || ''}>{text}</p>;
}

function StateBadge({ state, title }) {
  return <span class={'badge st-' + state} title={title}>{state}</span>;
}

// ---- auth -------------------------------------------------------------------------------------

// useAuth learns what the token may do: GET /v1/acl/token/self answers the capabilities per task
// type with ACLs on, acl_disabled without (everything allowed), 401 when a token is needed.
function useAuth() {
  const [auth, setAuth] = useState({ status: 'loading' });
  const load = useCallback(async () => {
    try {
      const { data } = await get('/v1/acl/token/self');
      setAuth({ status: 'ok', acl: true, self: data });
    } catch (e) {
      if (e.code === 'acl_disabled') setAuth({ status: 'ok', acl: false, self: null });
      else if (e.status === 401) setAuth({ status: 'login', error: getToken() ? e : null });
      else setAuth({ status: 'error', error: e });
    }
  }, []);
  useEffect(() => {
    setUnauthorizedHandler(() => setAuth((a) => (a.status === 'ok' ? { status: 'login', error: new ApiError(401, 'unauthorized', 'your token is no longer accepted: sign in again') } : a)));
    load();
  }, [load]);
  const can = useCallback((cap, type) => {
    if (auth.status !== 'ok') return false;
    if (!auth.acl) return true;
    const s = auth.self;
    if (s.management) return true;
    return (s.capabilities?.[type] || []).includes(cap);
  }, [auth]);
  const canAny = useCallback((cap) => {
    if (auth.status !== 'ok') return false;
    if (!auth.acl || auth.self.management) return true;
    return Object.values(auth.self.capabilities || {}).some((c) => c.includes(cap));
  }, [auth]);
  return { ...auth, can, canAny, reload: load };
}

function Login({ auth }) {
  const [token, setTok] = useState('');
  const submit = (e) => {
    e.preventDefault();
    setToken(token.trim());
    auth.reload();
  };
  return (
    <main class="login">
      <h1>taskworker</h1>
      <form onSubmit={submit} id="login" method="post">
        <p>This cluster has access control on. Sign in with a token (an ACL token's secret ID, or the cluster's API token). It is kept in this tab only.</p>
        <label for="token">Token</label>
        <input id="token" type="password" autocomplete="off" value={token} onInput={(e) => setTok(e.target.value)} autofocus required />
        <button type="submit">Sign in</button>
        <ErrorBox error={auth.error} />
      </form>
    </main>
  );
}

// ---- layout -----------------------------------------------------------------------------------

const PAGES = [['cluster', 'Cluster'], ['tasks', 'Tasks'], ['queues', 'Queues'], ['submit', 'Submit'], ['schedules', 'Schedules'], ['workflows', 'Workflows'], ['throughput', 'Throughput']];

function Nav({ page, auth }) {
  const signOut = () => { setToken(''); auth.reload(); };
  return (
    <header class="top">
      <a class="brand" href="#/cluster">taskworker</a>
      <nav aria-label="Pages">
        {PAGES.filter(([p]) => p !== 'submit' || auth.canAny('submit')).map(([p, label]) => (
          <a href={'#/' + p} id={'nav-' + p} aria-current={page === p ? 'page' : undefined}>{label}</a>
        ))}
      </nav>
      {auth.acl && (
        <span class="who">
          <span title="signed in as">{auth.self.description || short(auth.self.principal)}</span>
          <button type="button" class="link" onClick={signOut}>Sign out</button>
        </span>
      )}
    </header>
  );
}

// ---- cluster ----------------------------------------------------------------------------------

function useNow(every = 1000) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), every);
    return () => clearInterval(t);
  }, [every]);
  return now;
}

function Cluster() {
  const { data, error } = useWatch('/v1/cluster', 250);
  const [active, setActive] = useState([]);
  const now = useNow();
  // The running tasks, read again when the cluster changes (at most once a second, however busy
  // the cluster), so that they visibly move. A read in flight is left to finish; leaving the page
  // aborts it.
  const unmount = useRef(null);
  const lastRead = useRef(0);
  useEffect(() => {
    unmount.current = new AbortController();
    return () => unmount.current.abort();
  }, []);
  useEffect(() => {
    if (!data) return undefined;
    const timer = setTimeout(() => {
      lastRead.current = Date.now();
      const signal = unmount.current.signal;
      Promise.all(['running', 'assigned'].map((s) => get('/v1/tasks?state=' + s + '&limit=200', { signal })))
        .then((rs) => setActive(rs.flatMap((r) => r.data)))
        .catch(() => {});
    }, Math.max(0, lastRead.current + 1000 - Date.now()));
    return () => clearTimeout(timer);
  }, [data]);
  if (!data) return <section><h1>Cluster</h1><ErrorBox error={error} />{!error && <p>Loading…</p>}</section>;
  const byNode = {};
  for (const t of active) (byNode[t.node] ||= []).push(t);
  const counts = data.tasks || {};
  return (
    <section>
      <h1>Cluster</h1>
      <ErrorBox error={error} />
      <p class="summary">
        Leader: <strong id="leader">{data.leader || 'none'}</strong> · {count(data.nodes.length, 'node')} ·{' '}
        {data.workers?.length > 0 && <>{count(data.workers.filter((w) => w.state === 'up').length, 'worker')} up ·{' '}</>}
        {Object.entries(counts).map(([s, n]) => <a href={'#/tasks?state=' + s} class="count">{s} {n}</a>)}
      </p>
      <div class="cards">
        {data.nodes.map((n) => <NodeCard n={n} tasks={byNode[n.name] || []} now={now} />)}
      </div>
      {data.workers?.length > 0 && <Workers workers={data.workers} byWorker={byNode} />}
    </section>
  );
}

// Workers lists the processes outside the agents that run task types (docs/workers.md), each
// with the node it connects through. A worker that is down or has left shows no load: the count
// is the last one recorded.
function Workers({ workers, byWorker }) {
  const sorted = [...workers].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return (
    <>
      <h2>Workers</h2>
      <table class="tasks workers" id="workers">
        <thead><tr><th scope="col">worker</th><th scope="col">node</th><th scope="col">state</th><th scope="col">draining</th><th scope="col">running / capacity</th><th scope="col">types</th><th scope="col">labels</th></tr></thead>
        <tbody>
          {sorted.map((w) => {
            const tasks = byWorker[w.name] || [];
            return (
              <tr data-worker={w.name} data-state={w.state} class={w.state !== 'up' ? 'down' : ''}>
                <td><strong>{w.name}</strong></td>
                <td>{w.node}</td>
                <td><span class={'badge ws-' + w.state}>{w.state}</span></td>
                <td>{w.draining ? <span class="badge draining">draining</span> : 'no'}</td>
                <td>
                  {w.state === 'up' ? <>{w.running} / {w.capacity}</> : '—'}
                  {tasks.length > 0 && (
                    <ul class="running" aria-label={'tasks on ' + w.name}>
                      {tasks.map((t) => <li><a href={'#/task/' + t.id} data-task={t.id}>{t.type} {short(t.id)}</a> <StateBadge state={t.state} /></li>)}
                    </ul>
                  )}
                </td>
                <td><span class="types">{(w.task_types || []).map((t) => <span class="chip" title={t.description || ''}>{t.type}@{t.version}</span>)}</span></td>
                <td><span class="types">{Object.keys(w.labels || {}).sort().map((k) => <span class="chip label">{k}={w.labels[k]}</span>)}</span></td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </>
  );
}

function NodeCard({ n, tasks, now }) {
  const down = n.state !== 'alive';
  const up = n.started_at ? now - new Date(n.started_at).getTime() : null;
  return (
    <article class={'card' + (down ? ' down' : '') + (n.draining ? ' draining' : '')} data-node={n.name} data-state={n.state}>
      <header>
        <h2>{n.name}</h2>
        <span class={'badge gs-' + n.state}>{n.state}</span>
        <span class={'badge role-' + n.raft_role}>{n.raft_role}</span>
        {n.draining && <span class="badge draining">draining{n.drain_deadline ? ' ' + fmtDur(new Date(n.drain_deadline).getTime() - now) : ''}</span>}
      </header>
      <label class="bar">
        <span>running {n.running} / {n.capacity}</span>
        <meter min="0" max={Math.max(n.capacity, 1)} value={n.running} high={Math.max(n.capacity, 1) * 0.99} />
      </label>
      <dl>
        <dt>version</dt><dd>{n.version}</dd>
        <dt>uptime</dt><dd>{down ? '—' : fmtDur(up)}</dd>
        <dt>http</dt><dd><a href={'http://' + n.http_addr + '/ui/'}>{n.http_addr}</a></dd>
        {n.lag != null && n.lag > 0 && <><dt>lag</dt><dd>{count(n.lag, 'entry', 'entries')}</dd></>}
      </dl>
      <p class="types">{(n.task_types || []).map((t) => <span class="chip">{t.type}@{t.version}</span>)}</p>
      {tasks.length > 0 && (
        <ul class="running" aria-label={'tasks on ' + n.name}>
          {tasks.map((t) => <li><a href={'#/task/' + t.id} data-task={t.id}>{t.type} {short(t.id)}</a> <StateBadge state={t.state} /></li>)}
        </ul>
      )}
    </article>
  );
}

// ---- tasks ------------------------------------------------------------------------------------

const TABS = ['', 'scheduled', 'pending', 'assigned', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'];
const PAGE_SIZE = 50;

function Tasks({ params }) {
  const auth = useContext(Auth);
  const state = params.get('state') || '';
  const filters = { type: params.get('type') || '', node: params.get('node') || '', execution: params.get('execution') || '' };
  const submitter = params.get('submitter') || '';
  const queue = params.get('queue') || '';
  const from = params.get('from') || '';
  const to = params.get('to') || '';
  const cursor = params.get('next') || '';
  const after = params.get('after') || '';
  const [counts, setCounts] = useState({});
  const [selected, setSelected] = useState(new Set());
  const [actionError, setActionError] = useState(null);
  const [busy, setBusy] = useState(false);

  const q = new URLSearchParams();
  q.set('limit', String(PAGE_SIZE));
  if (state && state !== 'retrying') q.set('state', state);
  if (state === 'retrying') q.set('state', 'pending');
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  // Submitter and creation time are filtered by the server too (no index counts them, so the
  // total is absent then).
  if (submitter) q.set('submitted_by', submitter);
  if (queue) q.set('queue', queue);
  if (from && !isNaN(new Date(from))) q.set('since', new Date(from).toISOString());
  if (to && !isNaN(new Date(to))) q.set('until', new Date(to).toISOString());
  if (cursor) q.set('next', cursor);
  else if (after) q.set('after', after);
  const path = '/v1/tasks?' + q.toString();
  // Only the first page follows the cluster live; a later page would shift under the reader.
  const live = !cursor && !after;
  const { data, headers, error } = useWatch(path, live ? 1000 : 1e9);

  useEffect(() => {
    const ac = new AbortController();
    get('/v1/cluster', { signal: ac.signal }).then(({ data: c }) => setCounts(c.tasks || {})).catch(() => {});
    return () => ac.abort();
  }, [data]);
  useEffect(() => setSelected(new Set()), [path]);

  const setParam = (k, v) => {
    const p = new URLSearchParams(params);
    if (v) p.set(k, v); else p.delete(k);
    if (k !== 'next' && k !== 'after') { p.delete('next'); p.delete('after'); }
    go('#/tasks?' + p.toString());
  };

  let rows = data || [];
  if (state === 'retrying') rows = rows.filter((t) => t.failures > 0);

  const nextCursor = headers?.get(H_NEXT);
  const total = headers?.get(H_TOTAL);
  const last = data && data.length === PAGE_SIZE ? data[data.length - 1] : null;
  const nextPage = () => (nextCursor ? setParam('next', nextCursor) : last && setParam('after', last.id));

  const cancellable = rows.filter((t) => !TERMINAL.has(t.state) && auth.can('cancel', t.type));
  const toggle = (id) => setSelected((s) => { const n = new Set(s); n.has(id) ? n.delete(id) : n.add(id); return n; });
  const cancelSelected = async () => {
    setBusy(true);
    setActionError(null);
    const errs = [];
    for (const id of selected) {
      try { await post('/v1/tasks/' + encodeURIComponent(id) + '/cancel'); } catch (e) { if (e.code !== 'already_finished') errs.push(e); }
    }
    setBusy(false);
    setSelected(new Set());
    if (errs.length) setActionError(errs[0]);
  };

  return (
    <section>
      <h1>Tasks</h1>
      <nav class="tabs" aria-label="Task states">
        {TABS.map((s) => (
          <a href={'#/tasks' + (s ? '?state=' + s : '')} aria-current={state === s ? 'page' : undefined} data-tab={s || 'all'}>
            {s || 'all'}{s && counts[s] != null ? ' ' + counts[s] : ''}
          </a>
        ))}
      </nav>
      <form class="filters" onSubmit={(e) => e.preventDefault()}>
        {['type', 'node', 'execution', 'submitter', 'queue'].map((k) => (
          <label>{k}<input name={k} value={k === 'submitter' ? submitter : k === 'queue' ? queue : filters[k]} onChange={(e) => setParam(k, e.target.value.trim())} placeholder="any" /></label>
        ))}
        <label>created from<input type="datetime-local" value={from} onChange={(e) => setParam('from', e.target.value)} /></label>
        <label>to<input type="datetime-local" value={to} onChange={(e) => setParam('to', e.target.value)} /></label>
      </form>
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      {state !== 'retrying' && <PurgePanel state={state} type={filters.type} auth={auth} />}
      <div class="toolbar">
        {cancellable.length > 0 && (
          <button type="button" id="cancel-selected" disabled={!selected.size || busy} onClick={cancelSelected}>
            Cancel selected ({selected.size})
          </button>
        )}
        <span class="muted">{[total != null ? count(Number(total), 'task') : '', live ? 'live' : ''].filter(Boolean).join(' · ')}</span>
        {!live && <a href={'#/tasks' + (state ? '?state=' + state : '')}>Newest</a>}
        {(nextCursor || last) && <button type="button" id="next-page" onClick={nextPage}>Older →</button>}
      </div>
      {!data && !error && <p>Loading…</p>}
      {data && (
        <table class="tasks">
          <thead><tr><th scope="col"><span class="sr">select</span></th><th scope="col">ID</th><th scope="col">type</th><th scope="col">state</th><th scope="col">queue</th><th scope="col">node</th><th scope="col">attempt</th><th scope="col">created</th><th scope="col">submitter</th></tr></thead>
          <tbody>
            {rows.map((t) => (
              <tr data-task={t.id}>
                <td>{cancellable.includes(t) && <input type="checkbox" aria-label={'select ' + t.id} checked={selected.has(t.id)} onChange={() => toggle(t.id)} />}</td>
                <td><a href={'#/task/' + t.id}>{short(t.id)}</a></td>
                <td>{t.type}</td>
                <td><StateBadge state={t.state} title={t.pending_reason} /></td>
                <td><QueueCell t={t} /></td>
                <td>{t.node}</td>
                <td>{t.attempt}/{t.max_attempts}</td>
                <td>{fmtTime(t.created_at)}</td>
                <td>{t.submitted_by || ''}</td>
              </tr>
            ))}
            {rows.length === 0 && <tr><td colSpan="9">No tasks.</td></tr>}
          </tbody>
        </table>
      )}
    </section>
  );
}

// ---- one task ---------------------------------------------------------------------------------

function attemptsOf(t) {
  const out = new Map();
  for (const h of t.history || []) {
    if (!h.attempt) continue;
    let a = out.get(h.attempt);
    if (!a) out.set(h.attempt, (a = { attempt: h.attempt, node: h.node, events: [] }));
    a.events.push(h);
    if (h.node) a.node = h.node;
  }
  return [...out.values()];
}

function Timeline({ t }) {
  const attempts = attemptsOf(t);
  if (!attempts.length) return <p>No attempt yet{t.not_before ? ', next after ' + fmtClock(t.not_before) : ''}.</p>;
  return (
    <ol class="timeline" id="attempts">
      {attempts.map((a) => {
        const start = a.events.find((e) => e.event === 'started');
        const end = a.events.find((e) => !['assigned', 'started'].includes(e.event));
        return (
          <li class={'attempt ev-' + (end ? end.event : 'running')}>
            <strong>Attempt {a.attempt}</strong> on {a.node || '?'}
            {start && <> · started {fmtClock(start.at)}</>}
            {end && <> · {end.event} {fmtClock(end.at)}{start && ' (' + fmtDur(new Date(end.at) - new Date(start.at)) + ')'}</>}
            {end?.error && <div class="err">{end.error}</div>}
          </li>
        );
      })}
      {t.state === 'pending' && t.not_before && <li class="attempt ev-backoff">backoff until {fmtClock(t.not_before)}</li>}
    </ol>
  );
}

function Output({ id, canLogs }) {
  const [lines, setLines] = useState([]);
  const [error, setError] = useState(null);
  const [done, setDone] = useState(false);
  useEffect(() => {
    if (!canLogs) return undefined;
    const ac = new AbortController();
    const buf = [];
    let timer = null;
    setLines([]);
    setDone(false);
    // Lines are batched into one render per animation frame, whatever their rate.
    const flush = () => { timer = null; setLines(buf.slice()); };
    follow(id, (l) => { buf.push(l); if (!timer) timer = requestAnimationFrame(flush); }, ac.signal)
      .then(() => { setDone(true); setLines(buf.slice()); })
      .catch((e) => { if (!ac.signal.aborted) setError(e); });
    return () => ac.abort();
  }, [id, canLogs]);
  if (!canLogs) return <p>Your token may not read this task's output.</p>;
  const byAttempt = new Map();
  for (const l of lines) {
    if (!byAttempt.has(l.attempt)) byAttempt.set(l.attempt, []);
    byAttempt.get(l.attempt).push(l);
  }
  return (
    <div id="output">
      <ErrorBox error={error} />
      {lines.length === 0 && <p>{done ? 'No output.' : 'Waiting for output…'}</p>}
      {[...byAttempt.entries()].map(([a, ls]) => (
        <div class="attempt-output">
          <h3>Attempt {a} on {ls[0].node}</h3>
          <pre class="log">{ls.map((l) => <div class={'line s-' + l.stream + (l.level ? ' l-' + l.level : '')}><span class="ts">{fmtClock(l.ts)}</span> <span class="stream">{l.stream}</span> {l.line}</div>)}</pre>
        </div>
      ))}
      {!done && lines.length > 0 && <p class="muted">following…</p>}
    </div>
  );
}

function Children({ t }) {
  const [kids, setKids] = useState(null);
  useEffect(() => {
    if (!t.execution_id) return undefined;
    const ac = new AbortController();
    get('/v1/tasks?execution=' + encodeURIComponent(t.execution_id) + '&limit=1000', { signal: ac.signal })
      .then(({ data }) => setKids(data)).catch(() => {});
    return () => ac.abort();
  }, [t.execution_id, t.modify_index]);
  if (!kids || kids.length <= 1) return null;
  const byParent = {};
  for (const k of kids) (byParent[k.parent_id || ''] ||= []).push(k);
  const roots = kids.filter((k) => !k.parent_id || !kids.some((p) => p.id === k.parent_id));
  const tree = (list) => (
    <ul>{list.map((k) => (
      <li><a href={'#/task/' + k.id} aria-current={k.id === t.id ? 'page' : undefined}>{k.type} {short(k.id)}</a> <StateBadge state={k.state} />{byParent[k.id] && tree(byParent[k.id])}</li>
    ))}</ul>
  );
  return <section class="children"><h2>Execution {short(t.execution_id)}</h2><div class="tree">{tree(roots)}</div></section>;
}

function Task({ id }) {
  const auth = useContext(Auth);
  const { data: t, error } = useWatch('/v1/tasks/' + encodeURIComponent(id), 200);
  const [actionError, setActionError] = useState(null);
  const [busy, setBusy] = useState(false);
  if (!t) return <section><h1>Task {short(id)}</h1><ErrorBox error={error} />{!error && <p>Loading…</p>}</section>;
  const act = async (f) => {
    setBusy(true);
    setActionError(null);
    try { await f(); } catch (e) { setActionError(e); }
    setBusy(false);
  };
  const cancel = () => act(() => post('/v1/tasks/' + encodeURIComponent(t.id) + '/cancel'));
  const again = () => act(async () => {
    const { data } = await post('/v1/tasks', { type: t.type, version: t.version, input: t.input, max_attempts: t.max_attempts, timeout: t.timeout });
    go('#/task/' + data.id);
  });
  return (
    <section>
      <h1>Task <code id="task-id">{t.id}</code></h1>
      <div class="toolbar">
        <StateBadge state={t.state} />
        {t.cancel_requested && !TERMINAL.has(t.state) && <span class="muted">cancel requested</span>}
        {!TERMINAL.has(t.state) && auth.can('cancel', t.type) && <button type="button" id="cancel" disabled={busy} onClick={cancel}>Cancel</button>}
        <RetryButton t={t} auth={auth} busy={busy} act={act} />
        {auth.can('submit', t.type) && <button type="button" id="run-again" disabled={busy} onClick={again}>Run again</button>}
      </div>
      {t.state === 'pending' && t.pending_reason && <p class="pending-reason" id="pending-reason" role="status">Waiting: {t.pending_reason}</p>}
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      <div class="grid2">
        <dl class="record">
          <dt>type</dt><dd>{t.type}@{t.version}</dd>
          <dt>node</dt><dd>{t.node || '—'}</dd>
          <dt>attempt</dt><dd>{t.attempt} of {t.max_attempts} ({t.failures} failed)</dd>
          <dt>timeout</dt><dd>{t.timeout}</dd>
          <ScheduleFields t={t} />
          <dt>created</dt><dd>{fmtTime(t.created_at)}</dd>
          <dt>started</dt><dd>{fmtTime(t.started_at) || '—'}</dd>
          <dt>finished</dt><dd>{fmtTime(t.finished_at) || '—'}</dd>
          {t.submitted_by && <><dt>submitted by</dt><dd>{t.submitted_by}</dd></>}
          {t.idempotency_key && <><dt>idempotency key</dt><dd>{t.idempotency_key}</dd></>}
          <dt>execution</dt><dd><a href={'#/tasks?execution=' + t.execution_id}>{short(t.execution_id)}</a></dd>
          <TraceField t={t} />
          {t.parent_id && <><dt>parent</dt><dd><a href={'#/task/' + t.parent_id}>{short(t.parent_id)}</a></dd></>}
        </dl>
        <div>
          <h2>Input</h2>
          <pre class="json">{pretty(t.input)}</pre>
          {t.state === 'succeeded' && <><h2>Result</h2><pre class="json" id="result">{pretty(t.result)}</pre></>}
          {t.error && <><h2>Error</h2><pre class="json err" id="task-error">{t.error.type}: {t.error.message}<FinalNote error={t.error} /></pre></>}
        </div>
      </div>
      <h2>Attempts</h2>
      <Timeline t={t} />
      <h2>Output</h2>
      <Output id={t.id} canLogs={auth.can('logs', t.type)} />
      <Children t={t} />
    </section>
  );
}

// ---- submit -----------------------------------------------------------------------------------

// shapeProblem checks input against the kind of JSON the type's example input has: the server
// is the authority (it answers invalid_input with the type's own rule), this only catches the
// obvious early.
function shapeProblem(example, v) {
  if (example === undefined || example === null) return '';
  const kind = (x) => (x === null ? 'null' : Array.isArray(x) ? 'array' : typeof x);
  const want = kind(example);
  const got = kind(v);
  if (want === got) {
    if (want === 'number' && Number.isInteger(example) && !Number.isInteger(v)) return 'this type takes an integer';
    if (want === 'object') {
      const missing = Object.keys(example).filter((k) => !(k in v));
      const extra = Object.keys(v).filter((k) => !(k in example));
      if (missing.length) return 'missing field' + (missing.length > 1 ? 's ' : ' ') + missing.join(', ');
      if (extra.length) return 'unknown field' + (extra.length > 1 ? 's ' : ' ') + extra.join(', ') + ' (the example has ' + Object.keys(example).join(', ') + ')';
    }
    return '';
  }
  return 'this type takes ' + (want === 'object' ? 'an object' : want === 'array' ? 'an array' : 'a ' + want) + ', like the example';
}

function Submit({ params }) {
  const auth = useContext(Auth);
  const [types, setTypes] = useState(null);
  const [error, setError] = useState(null);
  const [sel, setSel] = useState(params.get('type') || '');
  const [input, setInput] = useState('');
  const [attempts, setAttempts] = useState('');
  const [timeout, setTimeoutText] = useState('');
  const [key, setKey] = useState('');
  // Issue 14's options: when (delay or run_at), priority, queue, unique key and window.
  const [delay, setDelay] = useState('');
  const [runAt, setRunAt] = useState('');
  const [priority, setPriority] = useState('');
  const [queue, setQueue] = useState('');
  const [uniqueKey, setUniqueKey] = useState('');
  const [uniqueFor, setUniqueFor] = useState('');
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    get('/v1/types').then(({ data }) => setTypes(data.filter((t) => auth.can('submit', t.type)))).catch(setError);
  }, [auth]);
  const info = types?.find((t) => t.type + '@' + t.version === sel) || types?.find((t) => t.type === sel) || null;
  useEffect(() => {
    if (types && !info && types.length) setSel(types[0].type + '@' + types[0].version);
  }, [types]);
  useEffect(() => {
    if (info) setInput(info.example_input === undefined ? 'null' : pretty(info.example_input));
  }, [info?.type, info?.version]);
  let parsed;
  let problem = '';
  try { parsed = input.trim() === '' ? null : JSON.parse(input); problem = shapeProblem(info?.example_input, parsed); } catch (e) { problem = 'not valid JSON: ' + e.message; }
  const invalidJSON = problem.startsWith('not valid JSON');
  const submit = async (e) => {
    e.preventDefault();
    if (!info || invalidJSON) return;
    setBusy(true);
    setError(null);
    try {
      const body = { type: info.type, version: info.version, input: parsed };
      if (attempts) body.max_attempts = Number(attempts);
      if (timeout) body.timeout = timeout;
      if (key) body.idempotency_key = key;
      if (delay) body.delay = delay;
      if (runAt && !isNaN(new Date(runAt))) body.run_at = new Date(runAt).toISOString();
      if (priority) body.priority = Number(priority);
      if (queue) body.queue = queue;
      if (uniqueKey) body.unique_key = uniqueKey;
      if (uniqueFor) body.unique_for = uniqueFor;
      const { data } = await post('/v1/tasks', body);
      go('#/task/' + data.id);
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };
  if (!types) return <section><h1>Submit</h1><ErrorBox error={error} /><p>Loading…</p></section>;
  return (
    <section>
      <h1>Submit a task</h1>
      <form id="submit-form" class="submit" onSubmit={submit}>
        <label for="type">Type</label>
        <select id="type" value={info ? info.type + '@' + info.version : ''} onChange={(e) => setSel(e.target.value)}>
          {types.map((t) => <option value={t.type + '@' + t.version}>{t.type} (v{t.version})</option>)}
        </select>
        {info && <p class="desc" id="type-desc">{info.description} <span class="muted">Offered by {(info.nodes || []).join(', ') || 'no alive node'}.</span></p>}
        <label for="input">Input (JSON)</label>
        <textarea id="input" rows="8" spellcheck={false} value={input} onInput={(e) => setInput(e.target.value)} aria-invalid={problem ? 'true' : 'false'} aria-describedby="input-check" />
        <p id="input-check" class={problem ? (invalidJSON ? 'error' : 'warn') : 'ok'}>{problem || 'valid JSON'}</p>
        <details>
          <summary>Options</summary>
          <label>max attempts<input type="number" min="1" value={attempts} onInput={(e) => setAttempts(e.target.value)} placeholder="3" /></label>
          <label>timeout<input value={timeout} onInput={(e) => setTimeoutText(e.target.value)} placeholder="30s" /></label>
          <label>idempotency key<input value={key} onInput={(e) => setKey(e.target.value)} /></label>
          <label>delay<input id="opt-delay" value={delay} onInput={(e) => setDelay(e.target.value)} placeholder="2s (or run at)" /></label>
          <label>run at<input id="opt-run-at" type="datetime-local" step="1" value={runAt} onInput={(e) => setRunAt(e.target.value)} /></label>
          <label>priority<input id="opt-priority" type="number" min="-1000" max="1000" value={priority} onInput={(e) => setPriority(e.target.value)} placeholder="0" /></label>
          <label>queue<input id="opt-queue" value={queue} onInput={(e) => setQueue(e.target.value.trim())} placeholder="default" /></label>
          <label>unique key<input id="opt-unique-key" value={uniqueKey} onInput={(e) => setUniqueKey(e.target.value)} /></label>
          <label>unique for<input id="opt-unique-for" value={uniqueFor} onInput={(e) => setUniqueFor(e.target.value)} placeholder="1h" /></label>
        </details>
        <button type="submit" id="submit" disabled={busy || invalidJSON || !info}>Submit</button>
        <ErrorBox error={error} />
      </form>
    </section>
  );
}

// ---- throughput -------------------------------------------------------------------------------

function Chart({ title, series, data, id }) {
  const el = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const width = () => Math.max(280, el.current.clientWidth);
    plot.current = new uPlot({ title, width: width(), height: 240, series: [{}, ...series], scales: { x: { time: true } }, legend: { live: false } }, data, el.current);
    const onResize = () => plot.current.setSize({ width: width(), height: 240 });
    addEventListener('resize', onResize);
    return () => { removeEventListener('resize', onResize); plot.current.destroy(); };
  }, []);
  useEffect(() => { plot.current?.setData(data); }, [data]);
  return <div class="chart" id={id} ref={el} />;
}

function Throughput() {
  const [d, setD] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    // A time series moves every second: one request every two, never two at once.
    const ac = new AbortController();
    (async () => {
      while (!ac.signal.aborted) {
        try { setD((await get('/v1/stats/throughput', { signal: ac.signal })).data); setError(null); } catch (e) { if (!ac.signal.aborted) setError(e); }
        await new Promise((r) => setTimeout(r, 2000));
      }
    })();
    return () => ac.abort();
  }, []);
  const series = useMemo(() => {
    if (!d) return null;
    const t0 = new Date(d.start).getTime() / 1000;
    const xs = d.started.map((_, i) => t0 + i);
    return { counts: [xs, d.started, d.succeeded, d.failed], wait: [xs, d.queue_wait_ms] };
  }, [d]);
  const sum = (a) => a.reduce((x, y) => x + y, 0);
  return (
    <section>
      <h1>Throughput</h1>
      <p class="muted">Last 15 minutes, per second, as the node serving this page applied them.</p>
      <ErrorBox error={error} />
      {series && (
        <>
          <p class="summary">started {sum(d.started)} · succeeded {sum(d.succeeded)} · failed {sum(d.failed)}</p>
          <Chart id="chart-counts" title="Tasks per second" data={series.counts} series={[
            { label: 'started', stroke: '#2563eb' }, { label: 'succeeded', stroke: '#16a34a' }, { label: 'failed', stroke: '#dc2626' }]} />
          <Chart id="chart-wait" title="Mean queue wait (ms)" data={series.wait} series={[{ label: 'queue wait ms', stroke: '#9333ea', spanGaps: false, points: { show: true, size: 5 } }]} />
        </>
      )}
    </section>
  );
}

// ---- queues, priorities, delays ----------------------------------------------------------------

// QueueCell is a task row's queue, with its priority when it has one.
function QueueCell({ t }) {
  return <>{t.queue || 'default'}{t.priority ? <span class="muted" title="priority"> ↑{t.priority}</span> : null}</>;
}

// ScheduleFields are the task record's delay, priority and queue.
function ScheduleFields({ t }) {
  return (
    <>
      <dt>queue</dt><dd><a href={'#/queues'}>{t.queue || 'default'}</a></dd>
      {t.priority ? <><dt>priority</dt><dd>{t.priority}</dd></> : null}
      {t.run_at && <><dt>run at</dt><dd>{fmtTime(t.run_at)}</dd></>}
    </>
  );
}

// Queues lists the queues (limit, paused, counts) with pause/resume and a limit to set, and the
// type limits. Changing them needs the operator right: a refusal shows as the server's error.
function Queues() {
  const { data, error } = useWatch('/v1/queues', 1000);
  const { data: limits } = useWatch('/v1/type-limits', 2000);
  const [actionError, setActionError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [typeName, setTypeName] = useState('');
  const act = async (f) => {
    setBusy(true);
    setActionError(null);
    try { await f(); } catch (e) { setActionError(e); }
    setBusy(false);
  };
  const update = (name, body) => act(() => post('/v1/queues/' + encodeURIComponent(name), body));
  const setLimit = (path, value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < 0) { setActionError(new ApiError(400, 'invalid_queue', 'a limit is a whole number, 0 for none')); return; }
    act(() => post(path, { limit: n }));
  };
  return (
    <section>
      <h1>Queues</h1>
      <p class="muted">A queue's limit is the most of its tasks assigned or running at once across the cluster (0: none); a paused queue starts none of its tasks. Higher priority runs first, and a waiting task gains one point per 10 s, at most 10.</p>
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      {!data && !error && <p>Loading…</p>}
      {data && (
        <table class="tasks" id="queues">
          <thead><tr><th scope="col">queue</th><th scope="col">limit</th><th scope="col">state</th><th scope="col">scheduled</th><th scope="col">pending</th><th scope="col">running</th><th scope="col"><span class="sr">actions</span></th></tr></thead>
          <tbody>
            {data.queues.map((q) => (
              <tr data-queue={q.name}>
                <td><a href={'#/tasks?queue=' + encodeURIComponent(q.name)}>{q.name}</a></td>
                <td>
                  <form onSubmit={(e) => { e.preventDefault(); setLimit('/v1/queues/' + encodeURIComponent(q.name), e.target.elements.limit.value); }}>
                    <input name="limit" type="number" min="0" size="5" aria-label={'limit of ' + q.name} placeholder={q.limit ? String(q.limit) : 'none'} />
                    <button type="submit" disabled={busy}>Set</button>
                  </form>
                </td>
                <td>{q.paused ? 'paused' : 'running'}</td>
                <td><a href={'#/tasks?state=scheduled&queue=' + encodeURIComponent(q.name)}>{q.scheduled}</a></td>
                <td>{q.pending}</td>
                <td>{q.running}</td>
                <td>
                  {q.paused
                    ? <button type="button" disabled={busy} onClick={() => update(q.name, { paused: false })}>Resume</button>
                    : <button type="button" disabled={busy} onClick={() => update(q.name, { paused: true })}>Pause</button>}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <h2>Type limits</h2>
      <p class="muted">The most tasks of a type assigned or running at once, over all queues.</p>
      {limits && limits.limits.length > 0 && (
        <table class="tasks" id="type-limits">
          <thead><tr><th scope="col">type</th><th scope="col">limit</th><th scope="col">running</th></tr></thead>
          <tbody>
            {limits.limits.map((l) => <tr><td>{l.type}</td><td>{l.limit}</td><td>{l.running}</td></tr>)}
          </tbody>
        </table>
      )}
      <form class="filters" onSubmit={(e) => { e.preventDefault(); if (typeName) setLimit('/v1/type-limits/' + encodeURIComponent(typeName), e.target.elements.limit.value); }}>
        <label>type<input value={typeName} onInput={(e) => setTypeName(e.target.value.trim())} placeholder="echo" /></label>
        <label>limit<input name="limit" type="number" min="0" placeholder="0 removes it" /></label>
        <button type="submit" disabled={busy || !typeName}>Set type limit</button>
      </form>
    </section>
  );
}

// ---- app --------------------------------------------------------------------------------------

function App() {
  const auth = useAuth();
  const route = useRoute();
  if (auth.status === 'loading') return <p class="loading">Loading…</p>;
  if (auth.status === 'login') return <Login auth={auth} />;
  if (auth.status === 'error') return <main><ErrorBox error={auth.error} /></main>;
  let page;
  switch (route.page) {
    case 'tasks': page = <Tasks params={route.params} />; break;
    case 'task': page = <Task id={route.arg} key={route.arg} />; break;
    case 'submit': page = <Submit params={route.params} />; break;
    case 'throughput': page = <Throughput />; break;
    case 'schedules': page = <Schedules auth={auth} ErrorBox={ErrorBox} />; break;
    case 'workflows': page = <Workflows params={route.params} ErrorBox={ErrorBox} StateBadge={StateBadge} />; break;
    case 'workflow': page = <Workflow id={route.arg} key={route.arg} auth={auth} ErrorBox={ErrorBox} StateBadge={StateBadge} />; break;
    case 'queues': page = <Queues />; break;
    default: page = <Cluster />;
  }
  return (
    <Auth.Provider value={auth}>
      <Nav page={route.page} auth={auth} />
      <main id="main">{page}</main>
    </Auth.Provider>
  );
}

render(<App />, document.getElementById('app'));
