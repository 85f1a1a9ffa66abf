// The console's Workflows pages: the list (state, steps done of total, created), and one
// workflow drawn as its graph, steps in columns by dependency depth, each box a link to its
// step's task and colored by its state, edges as arrows from a step to the steps that depend on
// it; with the final result and a Cancel button. Kept in its own file so the pages other
// features add merge cleanly into main.jsx. The layout is plain SVG computed here: no graph
// library.
import { useState, useEffect, useMemo, useRef } from 'preact/hooks';
import { get, post } from './api.js';

const fmt = (s) => (s ? new Date(s).toLocaleString() : '—');
const PAGE = 50;

// usePoll reads path now and again after every(data) ms (a workflow record has no blocking
// query), until the component goes or path changes; a failed read keeps the last data and shows
// the error. set replaces the data (with an action's answer, say) until the next read.
function usePoll(path, every) {
  const [state, setState] = useState({ data: null, error: null });
  const interval = useRef(every);
  interval.current = every;
  useEffect(() => {
    const ac = new AbortController();
    let timer = null;
    let last = null;
    setState({ data: null, error: null });
    const read = () => get(path, { signal: ac.signal })
      .then(({ data }) => { last = data; setState({ data, error: null }); })
      .catch((error) => { if (!ac.signal.aborted) setState((s) => ({ ...s, error })); })
      .finally(() => { if (!ac.signal.aborted) timer = setTimeout(read, interval.current(last)); });
    read();
    return () => { ac.abort(); clearTimeout(timer); };
  }, [path]);
  return { ...state, set: (data) => setState({ data, error: null }) };
}

// pace is how often a workflow is read again: every second while a step may change, every 5 s
// when it is large (its record is then megabytes), every 10 s once it and every step finished.
const pace = (w) => {
  if (!w) return 1000;
  if (w.state !== 'running' && w.steps_done === w.steps_total) return 10000;
  return w.steps_total > 1000 ? 5000 : 1000;
};

export function Workflows({ params, ErrorBox, StateBadge }) {
  const after = params.get('after') || '';
  const { data, error } = usePoll('/v1/workflows?limit=' + PAGE + (after ? '&after=' + encodeURIComponent(after) : ''), () => 2000);
  const list = data?.workflows;
  return (
    <section>
      <h1>Workflows</h1>
      <ErrorBox error={error} />
      <div class="toolbar">
        {after && <a href="#/workflows">Newest</a>}
        {data?.next && <a href={'#/workflows?after=' + encodeURIComponent(data.next)} id="workflows-older">Older →</a>}
      </div>
      {!list ? (!error && <p>Loading…</p>) : list.length === 0 ? <p id="no-workflows" class="muted">No workflows.</p> : (
        <table class="tasks" id="workflows">
          <thead><tr><th scope="col">ID</th><th scope="col">name</th><th scope="col">state</th><th scope="col">steps done</th><th scope="col">types</th><th scope="col">created</th><th scope="col">finished</th></tr></thead>
          <tbody>
            {list.map((w) => (
              <tr data-workflow={w.id} data-state={w.state}>
                <td><a href={'#/workflow/' + encodeURIComponent(w.id)}>{w.id}</a></td>
                <td>{w.name || ''}</td>
                <td><StateBadge state={w.state} title={w.error} /></td>
                <td class="progress">
                  <meter min="0" max={Math.max(w.steps_total, 1)} value={w.steps_done} />
                  <span>{w.steps_done} / {w.steps_total}</span>
                </td>
                <td><span class="types">{(w.types || []).map((t) => <span class="chip">{t}</span>)}</span></td>
                <td>{fmt(w.created_at)}</td>
                <td>{fmt(w.finished_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

// Box and gap sizes of the drawing, in SVG units (pixels at 100%).
const BOX_W = 184;
const BOX_H = 58;
const GAP_X = 64;
const GAP_Y = 14;
const PAD = 12;
// Past this many steps the graph is not drawn (the browser would crawl); the table still lists
// every step.
const MAX_DRAWN = 3000;

// layout places each step in the column of its depth (0 without dependencies, else one more
// than its deepest dependency), and orders each column by the mean row of the steps it depends
// on (ties in submission order), which keeps most edges short and uncrossed. It returns the
// boxes (x, y by step index), the edges [from, to], and the drawing's size.
export function layout(steps) {
  const n = steps.length;
  const at = new Map(steps.map((s, i) => [s.name, i]));
  const parents = steps.map((s) => (s.depends_on || []).map((d) => at.get(d)).filter((j) => j !== undefined));
  const children = steps.map(() => []);
  const indeg = parents.map((p) => p.length);
  parents.forEach((ps, i) => ps.forEach((j) => children[j].push(i)));
  // Kahn's order: the server refuses cycles, so every step is reached.
  const depth = new Array(n).fill(0);
  const queue = [];
  for (let i = 0; i < n; i++) if (indeg[i] === 0) queue.push(i);
  for (let k = 0; k < queue.length; k++) {
    const i = queue[k];
    for (const c of children[i]) {
      depth[c] = Math.max(depth[c], depth[i] + 1);
      if (--indeg[c] === 0) queue.push(c);
    }
  }
  const columns = [];
  for (let i = 0; i < n; i++) (columns[depth[i]] ||= []).push(i);
  const row = new Array(n).fill(0);
  columns.forEach((col, d) => {
    if (d > 0) {
      const key = (i) => parents[i].reduce((a, j) => a + row[j], 0) / Math.max(parents[i].length, 1);
      const keys = new Map(col.map((i) => [i, key(i)]));
      col.sort((a, b) => keys.get(a) - keys.get(b) || a - b);
    }
    col.forEach((i, r) => { row[i] = r; });
  });
  const tallest = Math.max(1, ...columns.map((c) => c.length));
  const boxes = new Array(n);
  columns.forEach((col, d) => {
    const offset = ((tallest - col.length) * (BOX_H + GAP_Y)) / 2; // short columns centered
    col.forEach((i, r) => { boxes[i] = { x: PAD + d * (BOX_W + GAP_X), y: PAD + offset + r * (BOX_H + GAP_Y) }; });
  });
  const edges = [];
  parents.forEach((ps, i) => ps.forEach((j) => edges.push([j, i])));
  return {
    boxes, edges,
    width: PAD * 2 + columns.length * BOX_W + Math.max(0, columns.length - 1) * GAP_X,
    height: PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y,
  };
}

const clip = (s, n) => (s.length > n ? s.slice(0, n - 1) + '…' : s);

function Graph({ steps }) {
  const g = useMemo(() => layout(steps), [steps.map((s) => s.name + '<' + (s.depends_on || []).join(',')).join(';')]);
  return (
    <div class="dag-scroll">
      <svg class="dag" id="dag" width={g.width} height={g.height} viewBox={`0 0 ${g.width} ${g.height}`} role="img"
        aria-label={`graph of ${steps.length} steps and ${g.edges.length} dependencies`}>
        <defs>
          <marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M 0 0 L 10 5 L 0 10 z" class="dag-arrowhead" />
          </marker>
        </defs>
        <g class="dag-edges">
          {g.edges.map(([from, to]) => {
            const a = g.boxes[from];
            const b = g.boxes[to];
            const x1 = a.x + BOX_W;
            const y1 = a.y + BOX_H / 2;
            const x2 = b.x - 2;
            const y2 = b.y + BOX_H / 2;
            const mid = (x1 + x2) / 2;
            return (
              <path class={'dag-edge from-' + steps[from].state} data-from={steps[from].name} data-to={steps[to].name}
                d={`M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`} marker-end="url(#dag-arrow)" />
            );
          })}
        </g>
        {steps.map((s, i) => {
          const { x, y } = g.boxes[i];
          const box = (
            <>
              <title>{s.name + ' (' + s.type + '): ' + s.state + (s.error ? '\n' + s.error : '')}</title>
              <rect x={x} y={y} width={BOX_W} height={BOX_H} rx="6" />
              <text x={x + 10} y={y + 19} class="dag-name">{clip(s.name, 22)}</text>
              <text x={x + 10} y={y + 36} class="dag-type">{clip(s.type, 26)}</text>
              <text x={x + 10} y={y + 51} class="dag-state">{s.state}</text>
            </>
          );
          return (
            <g class={'dag-step st-' + s.state} data-step={s.name} data-state={s.state}>
              {s.task_id ? <a href={'#/task/' + encodeURIComponent(s.task_id)}>{box}</a> : box}
            </g>
          );
        })}
      </svg>
    </div>
  );
}

export function Workflow({ id, auth, ErrorBox, StateBadge }) {
  const { data: w, error, set } = usePoll('/v1/workflows/' + encodeURIComponent(id), pace);
  const [actionError, setActionError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [listed, setListed] = useState(false); // the table's rows exist only while it is open
  if (!w) return <section><h1>Workflow {id}</h1><ErrorBox error={error} />{!error && <p>Loading…</p>}</section>;
  const steps = w.steps || [];
  const canCancel = w.state === 'running' && (w.types || []).every((t) => auth.can('cancel', t));
  const cancel = async () => {
    setBusy(true);
    setActionError(null);
    try { set((await post('/v1/workflows/' + encodeURIComponent(w.id) + '/cancel')).data); } catch (e) { setActionError(e); }
    setBusy(false);
  };
  const counts = {};
  for (const s of steps) counts[s.state] = (counts[s.state] || 0) + 1;
  return (
    <section>
      <h1>Workflow <code id="workflow-id">{w.id}</code>{w.name && <span class="muted"> {w.name}</span>}</h1>
      <div class="toolbar">
        <span id="workflow-state"><StateBadge state={w.state} /></span>
        <span id="workflow-progress">{w.steps_done} / {w.steps_total} steps done</span>
        <span class="muted">{Object.keys(counts).sort().map((k) => k + ' ' + counts[k]).join(' · ')}</span>
        {canCancel && <button type="button" id="cancel-workflow" disabled={busy} onClick={() => confirm('Cancel workflow ' + w.id + '?') && cancel()}>Cancel</button>}
      </div>
      <ErrorBox error={error} />
      <ErrorBox error={actionError} />
      <dl class="record">
        <dt>on failure</dt><dd>{w.on_failure}</dd>
        <dt>created</dt><dd>{fmt(w.created_at)}</dd>
        <dt>finished</dt><dd>{fmt(w.finished_at)}</dd>
        {w.submitted_by && <><dt>submitted by</dt><dd>{w.submitted_by}</dd></>}
        {w.error && <><dt>error</dt><dd class="err" id="workflow-error">{w.error}</dd></>}
      </dl>
      {w.state === 'succeeded' && <><h2>Result</h2><pre class="json" id="workflow-result">{JSON.stringify(w.result, null, 2)}</pre></>}
      <h2>Graph</h2>
      {steps.length <= MAX_DRAWN ? <Graph steps={steps} /> : <p class="muted">{steps.length} steps: too many to draw; the table below lists them.</p>}
      <details id="workflow-steps" onToggle={(e) => setListed(e.currentTarget.open)}>
        <summary>Steps ({steps.length})</summary>
        {listed && <table class="tasks">
          <thead><tr><th scope="col">step</th><th scope="col">type</th><th scope="col">state</th><th scope="col">depends on</th><th scope="col">task</th><th scope="col">result or error</th></tr></thead>
          <tbody>
            {steps.map((s) => (
              <tr data-step={s.name}>
                <td>{s.name}</td>
                <td>{s.type}</td>
                <td><StateBadge state={s.state} /></td>
                <td>{(s.depends_on || []).join(', ')}</td>
                <td>{s.task_id ? <a href={'#/task/' + encodeURIComponent(s.task_id)}>{s.task_id}</a> : '—'}</td>
                <td>{s.error ? <span class="err">{clip(s.error, 120)}</span> : s.result !== undefined ? <code>{clip(JSON.stringify(s.result), 120)}</code> : ''}</td>
              </tr>
            ))}
          </tbody>
        </table>}
      </details>
    </section>
  );
}
