// Retry now and purge (issue 14): kept apart from main.jsx so features merge cleanly.
import { useState } from 'preact/hooks';
import { post } from './api.js';

const RETRYABLE = new Set(['failed', 'cancelled']);
const PURGEABLE = ['succeeded', 'failed', 'cancelled'];

// RetryButton re-runs a failed or cancelled task as itself (same ID, history kept, a new
// attempt): not "Run again", which submits a new task with the same input.
export function RetryButton({ t, auth, busy, act }) {
  if (!RETRYABLE.has(t.state) || !auth.can('submit', t.type)) return null;
  const retry = () => act(() => post('/v1/tasks/' + encodeURIComponent(t.id) + '/retry'));
  return (
    <button type="button" id="retry" disabled={busy} onClick={retry}
      title="Run this task again now: same ID, history kept, its attempts counted afresh">Retry</button>
  );
}

// FinalNote marks an error the task said no retry could fix.
export function FinalNote({ error }) {
  if (!error || !error.final) return null;
  return <span class="muted" id="final-error"> (final: not retried)</span>;
}

// PurgePanel deletes the finished tasks of the Tasks page's state tab and type filter. Purging
// without a type needs a management token (or no ACLs); with one, cancel on that type.
export function PurgePanel({ state, type, auth, onDone }) {
  const [before, setBefore] = useState('');
  const [busy, setBusy] = useState(false);
  const [msg, setMsg] = useState('');
  const [error, setError] = useState(null);
  if (state && !PURGEABLE.includes(state)) return null;
  const allowed = type ? auth.can('cancel', type) : !auth.acl || auth.self?.management;
  if (!allowed) return null;
  const what = (state || 'finished') + ' ' + (type ? type + ' ' : '') + 'tasks' + (before ? ' finished before ' + new Date(before).toLocaleString() : '');
  const purge = async () => {
    if (!confirm('Delete all ' + what + ' and their output? This cannot be undone.')) return;
    setBusy(true);
    setError(null);
    setMsg('');
    try {
      const body = {};
      if (state) body.state = state;
      if (type) body.type = type;
      if (before && !isNaN(new Date(before))) body.finished_before = new Date(before).toISOString();
      const { data } = await post('/v1/tasks/purge', body);
      setMsg('Purged ' + data.purged + (data.purged === 1 ? ' task' : ' tasks'));
      if (onDone) onDone();
    } catch (e) {
      setError(e);
    }
    setBusy(false);
  };
  return (
    <details class="purge" id="purge">
      <summary>Purge {what}</summary>
      <form class="filters" onSubmit={(e) => { e.preventDefault(); purge(); }}>
        <label>finished before<input type="datetime-local" value={before} onChange={(e) => setBefore(e.target.value)} /></label>
        <button type="submit" id="purge-go" disabled={busy}>Delete</button>
        {msg && <span class="muted" id="purge-result">{msg}</span>}
        {error && <span class="error" role="alert" data-code={error.code || ''}>{error.message}</span>}
      </form>
    </details>
  );
}
