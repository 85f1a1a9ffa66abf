// The console's Schedules page (issue 14): periodic schedules with their next runs, pause, resume,
// trigger and delete buttons, and a form to create one. Kept in its own file so the pages other
// features add merge cleanly into main.jsx.
import { useState, useEffect, useCallback } from 'preact/hooks';
import { get, request } from './api.js';

const OVERLAPS = ['skip', 'buffer_one', 'buffer_all', 'cancel_other', 'allow_all'];
const fmt = (s) => (s ? new Date(s).toLocaleString() : '—');

export function Schedules({ auth, ErrorBox }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  const reload = useCallback(() => {
    get('/v1/schedules').then(({ data }) => { setList(data); setError(null); }).catch(setError);
  }, []);
  useEffect(() => {
    reload();
    const t = setInterval(reload, 2000); // next runs and counters move with the clock
    return () => clearInterval(t);
  }, [reload]);
  const act = async (name, method, suffix) => {
    setError(null);
    try {
      await request(method, '/v1/schedules/' + encodeURIComponent(name) + suffix);
      reload();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <section>
      <h1>Schedules</h1>
      <ErrorBox error={error} />
      {!list ? <p>Loading…</p> : list.length === 0 ? <p id="no-schedules" class="muted">No schedules.</p> : (
        <table id="schedules">
          <thead><tr><th>Name</th><th>Type</th><th>Cron</th><th>Overlap</th><th>Next run</th><th>Last fired</th><th>Fired / skipped</th><th /></tr></thead>
          <tbody>
            {list.map((s) => {
              const can = auth.can('submit', s.type);
              return (
                <tr data-schedule={s.name}>
                  <td>{s.name}{s.paused && <span class="badge" data-paused> paused</span>}</td>
                  <td><a href={'#/tasks?type=' + encodeURIComponent(s.type)}>{s.type}</a></td>
                  <td><code>{s.cron}</code>{s.time_zone && <span class="muted"> {s.time_zone}</span>}</td>
                  <td>{s.overlap}</td>
                  <td title={(s.next_runs || []).map(fmt).join('\n')}>{fmt((s.next_runs || [])[0])}</td>
                  <td>{s.last_task_id ? <a href={'#/task/' + s.last_task_id}>{fmt(s.last_fired)}</a> : fmt(s.last_fired)}</td>
                  <td>{s.fired} / {s.skipped}{s.last_error && <span class="error" title={s.last_error}> !</span>}</td>
                  <td class="actions">
                    {can && (s.paused
                      ? <button type="button" data-act="resume" onClick={() => act(s.name, 'POST', '/resume')}>Resume</button>
                      : <button type="button" data-act="pause" onClick={() => act(s.name, 'POST', '/pause')}>Pause</button>)}
                    {can && <button type="button" data-act="trigger" onClick={() => act(s.name, 'POST', '/trigger')}>Run now</button>}
                    {can && <button type="button" data-act="delete" onClick={() => confirm('Delete schedule ' + s.name + '?') && act(s.name, 'DELETE', '')}>Delete</button>}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {auth.canAny('submit') && <CreateSchedule onCreated={reload} ErrorBox={ErrorBox} />}
    </section>
  );
}

function CreateSchedule({ onCreated, ErrorBox }) {
  const [f, setF] = useState({ name: '', cron: '@every 1m', time_zone: '', type: '', input: 'null', overlap: 'skip' });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const set = (k) => (e) => { const v = e.target.value; setF((old) => ({ ...old, [k]: v })); };
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = { cron: f.cron, type: f.type, overlap: f.overlap, input: f.input.trim() === '' ? null : JSON.parse(f.input) };
      if (f.time_zone) body.time_zone = f.time_zone;
      await request('PUT', '/v1/schedules/' + encodeURIComponent(f.name), { body });
      onCreated();
    } catch (err) {
      setError(err);
    }
    setBusy(false);
  };
  return (
    <form id="schedule-form" class="submit" onSubmit={submit}>
      <h2>Create or replace a schedule</h2>
      <label>name<input id="schedule-name" value={f.name} onInput={set('name')} required /></label>
      <label>cron<input id="schedule-cron" value={f.cron} onInput={set('cron')} placeholder="*/5 * * * *" required /></label>
      <label>time zone<input id="schedule-tz" value={f.time_zone} onInput={set('time_zone')} placeholder="UTC" /></label>
      <label>task type<input id="schedule-type" value={f.type} onInput={set('type')} required /></label>
      <label>input (JSON)<textarea id="schedule-input" rows="3" spellcheck={false} value={f.input} onInput={set('input')} /></label>
      <label>overlap<select id="schedule-overlap" value={f.overlap} onChange={set('overlap')}>{OVERLAPS.map((o) => <option value={o}>{o}</option>)}</select></label>
      <button type="submit" id="schedule-create" disabled={busy}>Save</button>
      <ErrorBox error={error} />
    </form>
  );
}
