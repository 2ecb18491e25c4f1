// pgfleet's web UI: the fleet (/), a server (/servers/{id}) and a query
// (/queries/{fingerprint}), drawn from the collector's JSON API (/api/v1).
// No build step: this file is served as written, embedded in the collector.
'use strict';

// ---- Helpers ---------------------------------------------------------------

const main = document.getElementById('main');
const crumbs = document.getElementById('crumbs');
const liveDot = document.getElementById('live');

/** An element: h('td', {class: 'num'}, 'text', child, …). Text is text, never HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** A link inside the UI, followed without reloading the page. */
function link(href, text, attrs) {
  return h('a', Object.assign({ href, 'data-nav': true }, attrs || {}), text);
}

const num = (v, digits = 1) => (v === undefined || v === null || Number.isNaN(v)) ? '–'
  : Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
const int = (v) => (v === undefined || v === null) ? '–' : Number(v).toLocaleString();

/** A time in the browser's zone, with UTC on hover. */
function time(iso) {
  if (!iso) return h('span', { class: 'muted' }, '–');
  const d = new Date(iso);
  return h('time', { datetime: iso, title: d.toISOString().replace('.000Z', 'Z') + ' UTC' },
    d.toLocaleString());
}

/** Seconds from a proto duration ("1.500000s"). */
const seconds = (d) => d ? parseFloat(d) : null;

function age(d) {
  const s = seconds(d);
  if (s === null) return '–';
  if (s < 60) return s.toFixed(1) + ' s';
  if (s < 3600) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

// ---- The API, with the read token -------------------------------------------

let token = sessionStorage.getItem('pgfleet-token') || '';
let signingIn = null;

function authHeaders() {
  return token ? { Authorization: 'Bearer ' + token } : {};
}

/** Asks for a read token once, until one is taken. */
function signIn() {
  if (signingIn) return signingIn;
  const dialog = document.getElementById('signin');
  const form = document.getElementById('signin-form');
  const input = document.getElementById('token');
  const error = document.getElementById('signin-error');
  signingIn = new Promise((resolve) => {
    form.onsubmit = async (e) => {
      e.preventDefault();
      const r = await fetch('/api/v1/session', { headers: { Authorization: 'Bearer ' + input.value.trim() } });
      if (!(await r.json()).signed_in) {
        error.textContent = 'This token is not one of the collector\'s read tokens.';
        return;
      }
      token = input.value.trim();
      sessionStorage.setItem('pgfleet-token', token);
      dialog.close();
      signingIn = null;
      resolve();
    };
  });
  if (!dialog.open) dialog.showModal();
  return signingIn;
}

// The reads of the page shown: stopped when another is shown, so that the
// collector stops them too (a fleet's week of one query takes minutes, and
// its store reads with three connections) rather than reading on for a
// page nobody looks at.
let reads = new AbortController();

/** GET /api/v1/{path} as JSON, one of the page's reads; a refusal throws
 * its message. */
async function api(path) {
  const signal = reads.signal;
  for (;;) {
    const r = await fetch('/api/v1/' + path, { headers: authHeaders(), signal });
    if (r.status === 401) { await signIn(); continue; }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    return body;
  }
}

/** Watch as Server-Sent Events, read through fetch so that it carries the
 * token; `on(event, data)` for each. Returns a function that stops it. */
function watch(path, on) {
  const stop = new AbortController();
  (async () => {
    while (!stop.signal.aborted) {
      try {
        const r = await fetch('/api/v1/' + path, { headers: authHeaders(), signal: stop.signal });
        if (r.status === 401) { await signIn(); continue; }
        liveDot.classList.add('on');
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buffer = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          // Every whole event in the buffer, then what is left of it cut
          // once (a second of a big fleet is a thousand events).
          let from = 0, end;
          while ((end = buffer.indexOf('\n\n', from)) >= 0) {
            const block = buffer.slice(from, end);
            from = end + 2;
            let event = 'message', data = '';
            for (const line of block.split('\n')) {
              if (line.startsWith('event: ')) event = line.slice(7);
              else if (line.startsWith('data: ')) data += line.slice(6);
            }
            if (data) on(event, JSON.parse(data));
          }
          buffer = buffer.slice(from);
        }
      } catch (e) {
        if (stop.signal.aborted) return;
      }
      liveDot.classList.remove('on');
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => { stop.abort(); liveDot.classList.remove('on'); };
}

// ---- Routing: the URL holds the state -----------------------------------------

let leave = [];   // what the page shown must stop when another is

function params() { return new URLSearchParams(location.search); }

/** Changes the URL's query (pushing a history entry, so Back undoes it). */
function setParams(changes, replace) {
  const p = params();
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined || v === '') p.delete(k); else p.set(k, v);
  }
  const url = location.pathname + (p.toString() ? '?' + p : '');
  if (replace) history.replaceState(null, '', url); else history.pushState(null, '', url);
  route();
}

function route() {
  for (const f of leave) f();
  leave = [];
  reads.abort();
  reads = new AbortController();
  const path = location.pathname;
  let m;
  crumbs.replaceChildren();
  if (path === '/' || path === '') return fleetPage();
  if ((m = path.match(/^\/servers\/([^/]+)$/))) return serverPage(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/queries\/([0-9a-f]{16})$/))) return queryPage(m[1]);
  main.replaceChildren(h('p', { class: 'error' }, 'No page at ' + path + '.'));
}

window.addEventListener('popstate', route);
document.addEventListener('click', (e) => {
  const a = e.target.closest('a[data-nav]');
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey) return;
  e.preventDefault();
  history.pushState(null, '', a.getAttribute('href'));
  route();
});

function failed(where, e) {
  // A read stopped because its page was left has nothing to say.
  if (e && e.name === 'AbortError') return;
  where.replaceChildren(h('p', { class: 'error' }, String(e.message || e)));
}

/** `el` says it is waiting for a read of the history, and after a few
 * seconds for how long: a question about many servers over days takes a
 * while, and a blank chart looks broken. Replaced by the answer. */
function reading(el) {
  const said = h('p', { class: 'muted reading' }, 'Reading…');
  el.replaceChildren(said);
  const started = Date.now();
  const timer = setInterval(() => {
    if (!said.isConnected) { clearInterval(timer); return; }
    const s = Math.round((Date.now() - started) / 1000);
    if (s >= 3) said.textContent = `Reading… ${s} s so far: a question about many servers over days can take a minute or more.`;
  }, 1000);
  return el;
}

// ---- Small charts -------------------------------------------------------------

/** A sparkline of `values` as SVG. */
function spark(values, width = 120, height = 22) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  svg.setAttribute('class', 'spark');
  if (!values || values.length < 2) return svg;
  const max = Math.max(1, ...values);
  const pts = values.map((v, i) =>
    `${(i / (values.length - 1) * (width - 2) + 1).toFixed(1)},${(height - 1 - v / max * (height - 2)).toFixed(1)}`);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', pts.join(' '));
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#2563eb');
  line.setAttribute('stroke-width', '1.5');
  svg.append(line);
  return svg;
}

function bar(share) {
  const pct = Math.max(0, Math.min(1, share || 0)) * 100;
  return h('span', { class: 'bar', title: pct.toFixed(0) + '%' }, h('span', { style: `width:${pct}%` }));
}

// CPU's green is its own: no other series is drawn in it.
const PALETTE = ['#2563eb', '#c026d3', '#dc2626', '#d97706', '#7c3aed', '#0891b2', '#db2777',
  '#65a30d', '#ea580c', '#4f46e5', '#0d9488', '#9333ea', '#b45309', '#be123c', '#78350f',
  '#1d4ed8', '#a16207', '#6d28d9', '#0e7490', '#9f1239'];
const colour = (key, i) => key === 'CPU' ? '#16a34a' : key === 'other' ? '#9ca3af' : PALETTE[i % PALETTE.length];

/** A stacked area chart of QueryLoad's series in `el`. `onPick(seconds)` is
 * given the instant clicked; `onZoom(start, end)` the range dragged over. */
function loadChart(el, load, { onPick, onZoom, label, cpus }) {
  const series = load.series || [];
  const times = (series[0] ? series[0].points : (load.coverage || [])).map((p) => Date.parse(p.at) / 1000);
  const raw = series.map((s) => s.points.map((p) => p.value));
  // Stacked: each series drawn as the sum of it and those before it, the
  // largest sum first so that the smaller ones paint over it.
  const sums = [];
  raw.forEach((values, i) => sums.push(values.map((v, j) => v + (i ? sums[i - 1][j] : 0))));
  const order = raw.map((_, i) => i).reverse();
  const rawValues = [null].concat(order.map((i) => raw[i]));
  const shown = (u, v, si, idx) => idx === null || idx === undefined ? '' : num(rawValues[si][idx], 2);
  let zoomed = false;   // a drag ends in a click too: it is not a pick
  const opts = {
    width: Math.max(300, el.clientWidth || 800),
    height: 260,
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: true } },
    axes: [{}, { label: label || 'average active sessions', size: 50 }],
    series: [{}].concat(order.map((i) => ({
      label: series[i].key === '' ? '(no text)' : series[i].key,
      stroke: colour(series[i].key, i),
      fill: colour(series[i].key, i) + '99',
      points: { show: false },
      value: shown,
    }))),
    hooks: {
      setSelect: [(u) => {
        if (u.select.width < 5 || !onZoom) return;
        const a = u.posToVal(u.select.left, 'x'), b = u.posToVal(u.select.left + u.select.width, 'x');
        u.setSelect({ width: 0, height: 0 }, false);
        zoomed = true;
        onZoom(a, b);
      }],
    },
  };
  const data = [times].concat(order.map((i) => sums[i]));
  if (!series.length) {
    opts.series.push({ label: 'no load', stroke: '#9ca3af' });
    data.push(times.map(() => 0));
  }
  // Load above the host's CPU count is sessions queueing for a CPU.
  if (cpus) {
    opts.series.push({ label: `CPUs (${cpus})`, stroke: '#111827', dash: [6, 4], width: 1.5, points: { show: false },
      value: () => String(cpus) });
    data.push(times.map(() => cpus));
  }
  el.replaceChildren();
  const chart = new uPlot(opts, data, el);
  chart.rawValues = rawValues;
  el.uplot = chart;
  chart.over.addEventListener('click', () => {
    const idx = chart.cursor.idx;
    if (zoomed) { zoomed = false; return; }
    // The instant under the pointer, not its step's start.
    if (onPick && idx !== null && idx !== undefined) onPick(chart.posToVal(chart.cursor.left, 'x'));
  });
  return chart;
}

// ---- The fleet: / ---------------------------------------------------------------

function fleetPage() {
  const p = params();
  const groupBy = p.get('group') || 'dc';
  const sort = p.get('sort') || 'load';
  const filter = p.get('filter') || '';
  document.title = 'pgfleet: fleet';
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const filterInput = h('input', { id: 'filter', value: filter, placeholder: 'dc=eu1 or a name', size: 18 });
  filterInput.addEventListener('change', () => setParams({ filter: filterInput.value }, true));
  const groupInput = h('input', { id: 'group', value: groupBy, size: 8 });
  groupInput.addEventListener('change', () => setParams({ group: groupInput.value }, true));
  const sortSelect = h('select', { id: 'sort' },
    h('option', { value: 'load', selected: sort === 'load' }, 'DB load'),
    h('option', { value: 'name', selected: sort === 'name' }, 'name'),
    h('option', { value: 'sessions', selected: sort === 'sessions' }, 'sessions'));
  sortSelect.addEventListener('change', () => setParams({ sort: sortSelect.value }, true));
  main.replaceChildren(h('section', {},
    h('h1', {}, 'Fleet'),
    h('div', { class: 'controls' },
      h('label', { for: 'filter' }, 'Filter'), filterInput,
      h('label', { for: 'group' }, 'Group by'), groupInput,
      h('label', { for: 'sort' }, 'Sort by'), sortSelect),
    body));

  const servers = new Map();
  const rows = new Map();   // server_id → its row, drawn from which message
  let pending = null;
  const draw = () => {
    pending = null;
    body.replaceChildren(fleetTable([...servers.values()], rows, { groupBy, sort, filter }));
  };
  // A big fleet changes a thousand times a second: redrawn at most once a
  // second then, and only the rows of servers that changed are made again.
  const redraw = () => { if (!pending) pending = setTimeout(draw, servers.size > 200 ? 1000 : 300); };
  leave.push(watch('watch', (event, data) => {
    if (event === 'full') { servers.clear(); for (const s of data.servers || []) servers.set(s.server_id, s); draw(); }
    else if (event === 'changed') { servers.set(data.server_id, data); redraw(); }
    else if (event === 'removed') { servers.delete(data); redraw(); }
  }));
  leave.push(() => clearTimeout(pending));
}

function matchesFilter(s, filter) {
  if (!filter) return true;
  return filter.split(/\s+/).filter(Boolean).every((term) => {
    const eq = term.indexOf('=');
    if (eq > 0) return (s.labels || {})[term.slice(0, eq)] === term.slice(eq + 1);
    return s.server_id.includes(term);
  });
}

/** A server's row of the fleet table. */
function serverRow(s, load) {
  const max = s.info && s.info.max_connections;
  return h('tr', { 'data-server': s.server_id },
    h('td', {}, link('/servers/' + encodeURIComponent(s.server_id), s.server_id)),
    h('td', {}, h('span', { class: 'status ' + s.status }, s.status),
      s.reason ? h('span', { class: 'muted' }, ' ' + s.reason) : null),
    h('td', { class: 'num' }, int(s.sessions)),
    h('td', { class: 'num load' }, num(load, 2)),
    h('td', { class: 'wide' }, spark(s.load && s.load.minutes)),
    h('td', {}, max ? [bar((s.sessions || 0) / max), ` ${int(s.sessions)}/${int(max)}`] : '–'));
}

function fleetTable(all, cache, { groupBy, sort, filter }) {
  const servers = all.filter((s) => matchesFilter(s, filter));
  const loadOf = (s) => (s.load && s.load.load) || 0;
  servers.sort(sort === 'name' ? (a, b) => a.server_id.localeCompare(b.server_id)
    : sort === 'sessions' ? (a, b) => (b.sessions || 0) - (a.sessions || 0)
      : (a, b) => loadOf(b) - loadOf(a) || a.server_id.localeCompare(b.server_id));
  const groups = new Map();
  for (const s of servers) {
    const g = (s.labels || {})[groupBy] || '(none)';
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(s);
  }
  const rows = [];
  for (const [g, list] of [...groups.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const up = list.filter((s) => s.status === 'up').length;
    rows.push(h('tr', { class: 'group' }, h('td', { colspan: 6 },
      `${groupBy}=${g}: ${list.length} ${list.length === 1 ? 'server' : 'servers'}, ${up} up, load ${num(list.reduce((t, s) => t + loadOf(s), 0))}`)));
    for (const s of list) {
      const kept = cache.get(s.server_id);
      if (kept && kept.from === s) { rows.push(kept.tr); continue; }
      const tr = serverRow(s, loadOf(s));
      cache.set(s.server_id, { from: s, tr });
      rows.push(tr);
    }
  }
  const listed = new Set(all.map((s) => s.server_id));
  for (const id of cache.keys()) if (!listed.has(id)) cache.delete(id);
  if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: 6, class: 'muted' },
    all.length ? 'No server matches the filter.' : 'No servers yet: start an agent that streams to this collector.')));
  return h('table', { id: 'fleet' },
    h('thead', {}, h('tr', {}, h('th', {}, 'server'), h('th', {}, 'health'), h('th', { class: 'num' }, 'sessions'),
      h('th', { class: 'num' }, 'DB load'), h('th', { class: 'wide' }, 'last hour'), h('th', {}, 'slots'))),
    h('tbody', {}, rows));
}

// ---- A server: /servers/{id} ------------------------------------------------------

const RANGES = ['15m', '1h', '6h', '24h', '7d'];
const STACKS = ['wait', 'query', 'user', 'application', 'client'];

/** The range the URL names: start and end (seconds), from start/end or range. */
function rangeOf(p) {
  const now = Date.now() / 1000;
  if (p.get('start') && p.get('end')) {
    return { start: Date.parse(p.get('start')) / 1000, end: Date.parse(p.get('end')) / 1000, zoomed: true };
  }
  const text = p.get('range') || '1h';
  const n = parseFloat(text), unit = text.replace(/[0-9.]/g, '');
  const s = n * ({ m: 60, h: 3600, d: 86400 }[unit] || 3600);
  return { start: now - s, end: now, zoomed: false };
}

const iso = (sec) => new Date(sec * 1000).toISOString();

function serverPage(id) {
  const p = params();
  const range = rangeOf(p);
  const stack = p.get('stack') || 'wait';
  const at = p.get('at');
  document.title = 'pgfleet: ' + id;
  crumbs.replaceChildren(link('/', 'fleet'), ' / ', id);
  const head = h('div', {}, h('h1', {}, id));
  const chartEl = reading(h('div', { id: 'load-chart' }));
  const topEl = reading(h('div', {}));
  const sessionsEl = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const poolsEl = h('div', {});
  const poolLanes = reading(h('div', { id: 'pool-timeline' }));
  const dbEl = h('div', {});
  const rangeSelect = h('select', { id: 'range' },
    (range.zoomed ? [h('option', { value: '', selected: true }, 'zoomed')] : []).concat(
      RANGES.map((r) => h('option', { value: r, selected: !range.zoomed && (p.get('range') || '1h') === r }, r))));
  rangeSelect.addEventListener('change', () => setParams({ range: rangeSelect.value, start: null, end: null, at: null }));
  const stackSelect = h('select', { id: 'stack' }, STACKS.map((s) => h('option', { value: s, selected: s === stack }, s)));
  stackSelect.addEventListener('change', () => setParams({ stack: stackSelect.value }));
  const slider = h('input', { id: 'slider', type: 'range', min: Math.floor(range.start), max: Math.floor(range.end),
    step: 1, value: at ? Math.floor(Date.parse(at) / 1000) : Math.floor(range.end) });
  const sliderLabel = h('span', { class: 'muted' });
  const showAt = (sec) => sliderLabel.replaceChildren('Sessions at ', time(iso(sec)));
  slider.addEventListener('input', () => showAt(+slider.value));
  slider.addEventListener('change', () => setParams({ at: iso(+slider.value) }));
  main.replaceChildren(
    head,
    h('section', {}, h('h2', {}, 'DB load'),
      h('div', { class: 'controls' },
        h('label', { for: 'range' }, 'Range'), rangeSelect,
        h('label', { for: 'stack' }, 'Stack by'), stackSelect,
        h('span', { class: 'muted' }, 'Drag to zoom; click an instant to see its sessions.')),
      chartEl),
    h('section', {}, h('h2', {}, 'Top queries in this range'), topEl),
    h('section', {}, h('h2', {}, at ? 'Sessions at an instant' : 'Sessions now'),
      h('div', { class: 'controls' }, slider), h('div', { class: 'controls' }, sliderLabel,
        at ? h('button', { onclick: () => setParams({ at: null }) }, 'Show live sessions') : null),
      sessionsEl),
    h('section', {}, h('h2', {}, 'Pool queue'),
      h('p', { class: 'muted' }, 'The path a request waits along: its application\'s pool, PgBouncer, then the server\'s connection slots.'),
      poolsEl, poolLanes),
    h('section', {}, h('h2', {}, 'Databases'), dbEl));
  if (at) showAt(Date.parse(at) / 1000); else sliderLabel.textContent = 'Move the slider, or click the chart, for the sessions at an instant.';

  const server = 'matchers=' + encodeURIComponent(`server_id="${id}"`);
  const span = `start=${iso(range.start)}&end=${iso(range.end)}`;
  // The host's CPU count, where the agent knows it, is a line on the chart.
  const info = loadSessions();
  Promise.all([api(`load?${span}&group_by=${stack}&${server}`), info]).then(([load, s]) => {
    loadChart(chartEl, load, {
      cpus: s && s.info && s.info.cpus,
      onPick: (sec) => setParams({ at: iso(sec) }),
      onZoom: (a, b) => setParams({ start: iso(a), end: iso(b), range: null, at: null }),
    });
  }).catch((e) => failed(chartEl, e));
  api(`top-queries?${span}&server_id=${encodeURIComponent(id)}&limit=10`)
    .then((r) => topEl.replaceChildren(topQueries(r))).catch((e) => failed(topEl, e));
  // The sessions (live, or at the instant chosen); resolves to the server.
  function loadSessions() {
    return api(`servers/${encodeURIComponent(id)}/activity?include_background=true${at ? '&at=' + encodeURIComponent(at) : ''}`)
      .then((r) => {
        head.replaceChildren(serverHead(r.server, id));
        sessionsEl.replaceChildren(sessionsTable(r));
        return r.server;
      }).catch((e) => { failed(sessionsEl, e); return null; });
  }
  api(`servers/${encodeURIComponent(id)}/pools`).then((r) => poolsEl.replaceChildren(poolQueue(r))).catch((e) => failed(poolsEl, e));
  poolTimeline(poolLanes, server, span, range).catch((e) => failed(poolLanes, e));
  api(`servers/${encodeURIComponent(id)}/databases`).then((r) => dbEl.replaceChildren(databases(r))).catch((e) => failed(dbEl, e));
  if (!at) {
    const timer = setInterval(loadSessions, 5000);
    leave.push(() => clearInterval(timer));
  }
}

function serverHead(s, id) {
  if (!s) return h('h1', {}, id);
  const labels = Object.entries(s.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
  return h('div', {},
    h('h1', {}, s.server_id, ' ', h('span', { class: 'status ' + s.status }, s.status)),
    h('p', { class: 'muted' }, [labels, s.info && s.info.version ? 'PostgreSQL ' + s.info.version : '',
      s.info && s.info.cpus ? `${s.info.cpus} CPUs` : '', s.reason || ''].filter(Boolean).join(' · ')));
}

function topQueries(r) {
  const rows = (r.queries || []).map((q) => h('tr', {},
    h('td', {}, q.fingerprint ? link('/queries/' + q.fingerprint, q.fingerprint) : '(other)'),
    h('td', { class: 'num' }, num(q.load, 2)),
    h('td', {}, (q.waits || []).slice(0, 3).map((w) => `${w.key} ${num(w.value, 2)}`).join(', ')),
    h('td', { class: 'num wide' }, q.statistics ? int(q.statistics.calls) : '–'),
    h('td', { class: 'num wide' }, q.statistics ? num(q.statistics.mean_time_ms, 2) : '–'),
    h('td', { class: 'text' }, q.text || '')));
  return h('table', { id: 'top-queries' },
    h('thead', {}, h('tr', {}, h('th', {}, 'query'), h('th', { class: 'num' }, 'load'), h('th', {}, 'waits'),
      h('th', { class: 'num wide' }, 'calls'), h('th', { class: 'num wide' }, 'mean ms'), h('th', {}, 'text'))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No load in this range.'))));
}

/** Sessions as blocking trees: each blocker with those it blocks under it. */
function sessionsTable(r) {
  const sessions = r.sessions || [];
  const byPid = new Map(sessions.map((s) => [s.pid, s]));
  const children = new Map();
  const roots = [];
  for (const s of sessions) {
    const blocker = (s.blocked_by || []).find((p) => byPid.has(p) && p !== s.pid);
    if (blocker !== undefined) {
      if (!children.has(blocker)) children.set(blocker, []);
      children.get(blocker).push(s);
    } else roots.push(s);
  }
  const rows = [];
  const seen = new Set();
  const add = (s, depth) => {
    if (seen.has(s.pid)) return;
    seen.add(s.pid);
    const blocked = (s.blocked_by || []).length > 0;
    rows.push(h('tr', { 'data-pid': s.pid, 'data-app': s.application_name },
      h('td', { class: 'num' }, '\u00a0'.repeat(depth * 3) + (depth ? '└ ' : '') + s.pid),
      h('td', {}, s.user), h('td', { class: 'wide' }, s.application_name), h('td', { class: 'wide' }, s.client),
      h('td', {}, s.state),
      h('td', { class: blocked ? 'blocked' : '' }, s.wait_event_type ? `${s.wait_event_type}:${s.wait_event}` : ''),
      h('td', { class: 'num' }, age(s.duration)),
      h('td', { class: 'text' }, s.query)));
    for (const c of children.get(s.pid) || []) add(c, depth + 1);
  };
  for (const s of roots) add(s, 0);
  for (const s of sessions) add(s, 0);
  return h('div', {},
    h('p', { class: 'muted' }, `${sessions.length} sessions, sampled `, time(r.sampled_at)),
    h('table', { id: 'sessions' },
      h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'pid'), h('th', {}, 'user'), h('th', { class: 'wide' }, 'application'),
        h('th', { class: 'wide' }, 'client'), h('th', {}, 'state'), h('th', {}, 'wait'), h('th', { class: 'num' }, 'for'),
        h('th', {}, 'query'))),
      h('tbody', {}, rows)));
}

/** The path a request waits along: application pools, PgBouncer, the server's slots. */
function poolQueue(r) {
  const hops = [];
  for (const p of r.client_pools || []) {
    hops.push(h('div', { class: 'hop' }, h('b', {}, `${p.kind} pool ${p.pool_name}`),
      `${int(p.used)}/${int(p.max)} used, `, h('span', { class: p.pending_requests ? 'blocked' : '' }, `${int(p.pending_requests)} waiting`),
      p.wait_time_count ? `, mean wait ${num(1000 * p.wait_time_seconds_sum / p.wait_time_count)} ms` : ''));
  }
  const bouncer = r.pgbouncer;
  if (bouncer && (bouncer.pools || []).length) {
    const waiting = bouncer.pools.reduce((t, p) => t + (p.client_waiting_connections || 0), 0);
    const maxWait = Math.max(0, ...bouncer.pools.map((p) => p.client_maxwait_seconds || 0));
    hops.push(h('div', { class: 'hop' }, h('b', {}, 'PgBouncer'),
      h('span', { class: waiting ? 'blocked' : '' }, `${int(waiting)} clients waiting`), `, longest ${num(maxWait)} s`));
  }
  const slots = r.slots;
  if (slots) {
    hops.push(h('div', { class: 'hop' }, h('b', {}, 'server slots'),
      bar(slots.used / Math.max(1, slots.max_connections - (slots.reserved || 0))),
      ` ${int(slots.used)}/${int(slots.max_connections)} (${int(slots.reserved)} reserved)`));
  }
  if (!hops.length) return h('p', { class: 'muted' }, 'No pools reported.');
  const out = [];
  hops.forEach((hop, i) => { if (i) out.push(h('span', { class: 'arrow' }, '→')); out.push(hop); });
  return h('div', { class: 'path', id: 'pool-queue' }, out);
}

/** The pool queue over the range, as lanes on one time axis (the cursor
 * moves through all of them): requests waiting in each pool, PgBouncer's
 * longest wait, and how full the server's slots were. From the per-minute
 * rollups, so a step is at least a minute. */
async function poolTimeline(el, server, span, range) {
  const ask = (metric, extra) => api(`metrics?metric=${metric}&${span}&${server}&group_by=pool${extra || ''}`);
  const [waiting, longest, slots] = await Promise.all([
    ask('pool_waiting'), ask('pool_max_wait_seconds'),
    ask('pool_utilisation', '&matchers=' + encodeURIComponent('pool="slots"'))]);
  const lanes = [
    ['waiting for a connection', 'requests', waiting, 1],
    ["PgBouncer's longest wait", 'seconds', longest, 1],
    ['server slots used', '%', slots, 100],
  ];
  el.replaceChildren();
  for (const [title, unit, r, scale] of lanes) {
    const series = (r.series || []).map((s) => [
      (s.labels && s.labels.pool) || '',
      [s.points.map((p) => Date.parse(p.at) / 1000), s.points.map((p) => p.value * scale)]]);
    const laneEl = h('div', { class: 'lane', 'data-lane': title });
    el.append(laneEl);
    if (!series.some(([, d]) => d[0].length)) {
      laneEl.replaceChildren(h('p', { class: 'muted' }, `${title}: nothing reported in this range.`));
      continue;
    }
    new uPlot({
      width: Math.max(300, el.clientWidth || 800),
      height: 120,
      cursor: { sync: { key: 'pool-queue' } },
      scales: {
        x: { time: true, range: () => [range.start, range.end] },
        // From zero: a share of the slots up to 100%, a count or a wait up
        // to a little over its largest value.
        y: { range: (u, min, max) => [0, unit === '%' ? 100 : Math.max(1, max * 1.1)] },
      },
      axes: [{}, { label: unit, size: 50 }],
      series: [{}].concat(series.map(([label], i) => ({
        label: `${title}: ${label}`,
        stroke: PALETTE[i % PALETTE.length],
        points: { show: true, size: 4 },
        value: (u, v) => (v === null || v === undefined ? '–' : num(v, 1)),
      }))),
    }, uPlot.join(series.map(([, d]) => d)), laneEl);
  }
}

function databases(r) {
  const rows = (r.databases || []).map((d) => h('tr', {},
    h('td', {}, d.totals.database), h('td', { class: 'num' }, int(d.totals.xact_commit)),
    h('td', { class: 'num' }, int(d.totals.xact_rollback)), h('td', { class: 'num wide' }, int(d.totals.deadlocks))));
  return h('div', {},
    h('table', { id: 'databases' }, h('thead', {}, h('tr', {}, h('th', {}, 'database'), h('th', { class: 'num' }, 'commits'),
      h('th', { class: 'num' }, 'rollbacks'), h('th', { class: 'num wide' }, 'deadlocks'))), h('tbody', {}, rows)),
    r.databases && r.databases[0] ? h('p', { class: 'muted' }, 'Counted since ', time(r.databases[0].since)) : null);
}

// ---- A query: /queries/{fingerprint} -----------------------------------------------

function queryPage(fp) {
  const p = params();
  const range = rangeOf(p);
  document.title = 'pgfleet: query ' + fp;
  crumbs.replaceChildren(link('/', 'fleet'), ' / query ', fp);
  const chartEl = reading(h('div', { id: 'query-chart' }));
  const statsEl = reading(h('div', {}));
  const rangeSelect = h('select', { id: 'range' }, RANGES.map((r) =>
    h('option', { value: r, selected: (p.get('range') || '1h') === r }, r)));
  rangeSelect.addEventListener('change', () => setParams({ range: rangeSelect.value, start: null, end: null }));
  main.replaceChildren(h('h1', {}, 'Query ', h('code', {}, fp)),
    h('section', {}, h('h2', {}, 'Its load on each server'),
      h('div', { class: 'controls' }, h('label', { for: 'range' }, 'Range'), rangeSelect), chartEl),
    h('section', {}, h('h2', {}, 'Statement statistics and text'), statsEl));
  const span = `start=${iso(range.start)}&end=${iso(range.end)}`;
  const query = 'matchers=' + encodeURIComponent(`query="${fp}"`);
  api(`load?${span}&group_by=server&${query}`).then((load) => loadChart(chartEl, load, {
    onZoom: (a, b) => setParams({ start: iso(a), end: iso(b), range: null }),
  })).catch((e) => failed(chartEl, e));
  api(`top-queries?${span}&${query}&limit=1`).then((r) => {
    const q = (r.queries || [])[0];
    if (!q) { statsEl.replaceChildren(h('p', { class: 'muted' }, 'No load or statistics of this query in this range.')); return; }
    const st = q.statistics || {};
    statsEl.replaceChildren(
      h('pre', { class: 'text', id: 'query-text' }, q.text || '(no text)'),
      h('table', {}, h('tbody', {},
        [['load', num(q.load, 2)], ['servers', (q.servers || []).join(', ')], ['calls', int(st.calls)],
          ['total time (ms)', num(st.total_time_ms)], ['mean time (ms)', num(st.mean_time_ms, 2)], ['rows', int(st.rows)],
          ['shared blocks hit / read', `${int(st.shared_blks_hit)} / ${int(st.shared_blks_read)}`],
          ['temp blocks written', int(st.temp_blks_written)], ['WAL bytes', int(st.wal_bytes)],
          ['waits', (q.waits || []).map((w) => `${w.key} ${num(w.value, 2)}`).join(', ')]]
          .map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v))))),
      r.statements ? null : h('p', { class: 'muted' }, 'No pg_stat_statements on these servers: load only.'));
  }).catch((e) => failed(statsEl, e));
}

// Asks for a token first when the collector wants one and the tab has
// none that works, rather than after a refusal.
fetch('/api/v1/session', { headers: authHeaders() })
  .then((r) => r.json())
  .then((s) => (s.tokens && !s.signed_in ? signIn() : null))
  .catch(() => null)
  .then(route);
