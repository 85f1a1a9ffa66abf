// A task's trace: its ID, linked to the trace viewer the node's --trace-url-template names
// (GET /v1/cluster's trace_url_template). Kept apart from main.jsx so features merge cleanly.
import { useState, useEffect } from 'preact/hooks';
import { get } from './api.js';

const TRACE_ID = /^[0-9a-f]{32}$/;

// traceURL is the template with the trace ID in it, or '' when either is not what the node
// validates (an http or https URL; 32 hex digits): the link never becomes anything else.
export function traceURL(template, traceID) {
  if (!template || !TRACE_ID.test(traceID || '') || !/^https?:\/\//i.test(template)) return '';
  return template.split('{trace_id}').join(traceID);
}

let templateOnce; // one read of the template per page load

export function TraceField({ t }) {
  const [template, setTemplate] = useState('');
  useEffect(() => {
    if (!t.trace_id) return;
    templateOnce = templateOnce || get('/v1/cluster').then(({ data }) => data.trace_url_template || '').catch(() => '');
    let live = true;
    templateOnce.then((tmpl) => live && setTemplate(tmpl));
    return () => { live = false; };
  }, [t.trace_id]);
  if (!t.trace_id) return null;
  const url = traceURL(template, t.trace_id);
  return (
    <>
      <dt>trace</dt>
      <dd id="trace">{url
        ? <a href={url} target="_blank" rel="noopener noreferrer" id="trace-link">{t.trace_id}</a>
        : <code>{t.trace_id}</code>}</dd>
    </>
  );
}
