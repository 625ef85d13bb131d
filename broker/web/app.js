// despool dashboard: polls the broker's read-only /api/v1 (no event stream, so headless
// browsers can dump the page) and renders with textContent only (file names are untrusted).
// Query options: ?poll=MS (refresh interval, default 2000), ?token=TOKEN (or #token=TOKEN) for
// a broker whose HTTP endpoint needs a bearer token.
(function () {
  'use strict';
  const params = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  const token = params.get('token') || hash.get('token') || '';
  const pollMs = Math.max(250, parseInt(params.get('poll') || '2000', 10) || 2000);
  const STATES = ['queued', 'running', 'deferred', 'applied', 'up-to-date', 'superseded', 'cancelled', 'dead'];
  const PAGE = 50;
  const view = { offset: 0, dp: '', package: '', state: '', next: null };

  function api(path) {
    const headers = token ? { Authorization: 'Bearer ' + token } : {};
    return fetch(path, { headers, cache: 'no-store' }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (b) {
          throw new Error(path + ': ' + r.status + ' ' + (b.message || r.statusText));
        });
      }
      return r.json().then(function (body) { return { body, headers: r.headers }; });
    });
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    return e;
  }

  function ago(iso, now) {
    if (!iso) return '';
    const s = Math.round((now - Date.parse(iso)) / 1000);
    const abs = Math.abs(s);
    const text = abs < 1 ? 'now' : abs < 60 ? abs + 's' : abs < 3600 ? Math.round(abs / 60) + 'm'
      : abs < 86400 ? Math.round(abs / 3600) + 'h' : Math.round(abs / 86400) + 'd';
    if (text === 'now') return text;
    return s >= 0 ? text + ' ago' : 'in ' + text;
  }

  function stateBadge(state) { return el('span', { class: 'state ' + state, text: state }); }

  function inUse(job) {
    if (!job.in_use || job.in_use.length === 0) return '';
    const held = {};
    for (const h of job.holders || []) (held[h.path] = held[h.path] || []).push('pid ' + h.pid + (h.command ? ' ' + h.command : ''));
    return job.in_use.map(function (p) { return held[p] ? p + ' (' + held[p].join(', ') + ')' : p; }).join(', ');
  }

  function fill(table, rows, emptyText, columns) {
    const body = document.querySelector('#' + table + ' tbody');
    const fresh = document.createElement('tbody');
    if (rows.length === 0) {
      fresh.appendChild(el('tr', { class: 'empty' }, [el('td', { colspan: String(columns), text: emptyText })]));
    }
    for (const r of rows) fresh.appendChild(r);
    body.replaceWith(fresh);
  }

  function jobRow(job, cells) {
    const tr = el('tr', { 'data-job-id': job.id, 'data-state': job.state, 'data-dp': job.dp });
    for (const c of cells) tr.appendChild(c instanceof Node ? el('td', {}, [c]) : el('td', { text: String(c) }));
    return tr;
  }

  function detail(job, now) {
    const parts = [];
    if (job.state === 'deferred' && job.next_attempt_at) parts.push('retry ' + ago(job.next_attempt_at, now));
    const u = inUse(job);
    if (u && (job.state === 'deferred' || job.state === 'dead')) parts.push('in use: ' + u);
    if (job.worker && job.state === 'running') parts.push('on ' + job.worker);
    if (job.last_error && (job.state === 'deferred' || job.state === 'dead')) parts.push('error: ' + job.last_error);
    if (job.stats && job.state === 'applied') parts.push(job.stats.files_copied + ' of ' + job.stats.files_total + ' files copied');
    return parts.join(', ');
  }

  function renderSummary(stats, now) {
    const s = document.getElementById('summary');
    s.replaceChildren(
      el('span', {}, ['workers ', el('b', { id: 'sum-workers', text: String(stats.workers) })]),
      el('span', {}, ['queue depth ', el('b', { id: 'sum-queue', text: String(stats.queue_depth) })]),
      el('span', {}, ['retry backlog ', el('b', { id: 'sum-backlog', text: String(stats.retry_backlog) })]),
      el('span', {}, ['oldest queued ', el('b', { text: stats.oldest_queued_at ? ago(stats.oldest_queued_at, now) : '–' })]),
      el('span', {}, ['last event ', el('b', { text: '#' + stats.last_event_seq })]));
    const st = document.getElementById('states');
    st.replaceChildren.apply(st, STATES.map(function (name) {
      return el('div', { class: 'count', 'data-state': name }, [el('b', { text: String(stats.jobs_by_state[name] || 0) }), stateBadge(name)]);
    }));
  }

  function renderDps(stats, recent) {
    // Latest job per (DP, package) among the recent jobs: what each DP has or is getting.
    const latest = {};
    for (const j of recent) {
      if (!j.package) continue;
      const key = j.dp + '\u0000' + j.package;
      const cur = latest[key];
      if (!cur || j.version > cur.version || (j.version === cur.version && j.updated_at > cur.updated_at)) latest[key] = j;
    }
    const byDp = {};
    for (const j of Object.values(latest)) (byDp[j.dp] = byDp[j.dp] || []).push(j);
    fill('dps', stats.dps.map(function (d) {
      const pkgs = (byDp[d.dp] || []).sort(function (a, b) { return a.package < b.package ? -1 : 1; });
      const cell = el('td', {}, pkgs.map(function (j) {
        return el('span', { class: 'pkg', 'data-job-id': j.id, 'data-state': j.state }, [j.package + ' v' + j.version + ' ', stateBadge(j.state)]);
      }));
      const tr = el('tr', { 'data-dp': d.dp }, [
        el('td', { text: d.dp }),
        el('td', { class: d.online ? 'online' : 'offline', text: d.online ? 'online' : 'offline' }),
        el('td', { class: 'num', text: String(d.queued) }),
        el('td', { class: 'num', text: String(d.running) }),
        el('td', { class: 'num', text: String(d.deferred) })]);
      tr.appendChild(cell);
      return tr;
    }), 'no DPs known yet', 6);
  }

  function renderWorkers(workers, now) {
    fill('workers', workers.map(function (w) {
      const pct = w.capacity ? Math.min(100, Math.round(100 * w.running / w.capacity)) : 0;
      const bar = el('span', { class: 'load' }, [el('i', { style: 'width:' + pct + '%' })]);
      return el('tr', { 'data-worker': w.name }, [
        el('td', { text: w.name }), el('td', { text: w.dps.join(', ') }),
        el('td', {}, [bar, w.running + ' / ' + w.capacity]),
        el('td', { text: ago(w.connected_at, now) }), el('td', { text: ago(w.last_heartbeat_at, now) }),
        el('td', { text: w.draining ? 'draining' : 'ready' })]);
    }), 'no workers connected', 6);
  }

  function refresh() {
    const q = new URLSearchParams({ limit: String(PAGE), offset: String(view.offset) });
    if (view.dp) q.set('dp', view.dp);
    if (view.package) q.set('package', view.package);
    if (view.state) q.set('state', view.state);
    return Promise.all([
      api('/api/v1/stats'), api('/api/v1/workers'),
      api('/api/v1/jobs?state=deferred&limit=100'), api('/api/v1/jobs?state=dead&limit=50'),
      api('/api/v1/jobs?limit=1000'), api('/api/v1/jobs?' + q.toString())
    ]).then(function (r) {
      const now = Date.now();
      const stats = r[0].body;
      renderSummary(stats, now);
      renderDps(stats, r[4].body);
      renderWorkers(r[1].body, now);
      fill('deferred', r[2].body.map(function (j) {
        return jobRow(j, [j.id, j.dp, j.package, j.version, j.attempts + ' / ' + j.max_attempts,
          el('span', { class: 'inuse', text: inUse(j) }),
          el('span', { title: j.next_attempt_at || '', text: j.next_attempt_at ? ago(j.next_attempt_at, now) + ' (' + j.next_attempt_at + ')' : '' }),
          j.last_error || '']);
      }), 'no deferred jobs', 8);
      fill('dead', r[3].body.map(function (j) {
        return jobRow(j, [j.id, j.dp, j.package, j.version, j.attempts + ' / ' + j.max_attempts, j.last_error || '', ago(j.updated_at, now)]);
      }), 'no dead jobs', 7);
      const page = r[5];
      view.next = page.headers.get('X-Next-Offset');
      document.getElementById('page').textContent = page.body.length
        ? (view.offset + 1) + '–' + (view.offset + page.body.length) : 'none';
      document.getElementById('next').disabled = !view.next;
      document.getElementById('prev').disabled = view.offset === 0;
      fill('jobs', page.body.map(function (j) {
        return jobRow(j, [j.id, j.kind, j.dp, j.package, j.version, stateBadge(j.state), j.attempts, detail(j, now), ago(j.updated_at, now)]);
      }), 'no jobs match', 9);
      const status = document.getElementById('status');
      status.className = 'status';
      status.textContent = 'updated ' + new Date(now).toISOString();
      document.body.setAttribute('data-loaded', 'true');
    }).catch(function (e) {
      const status = document.getElementById('status');
      status.className = 'status error';
      status.textContent = String(e.message || e);
    });
  }

  function loop() { refresh().then(function () { setTimeout(loop, pollMs); }); }

  document.getElementById('filters').addEventListener('submit', function (ev) {
    ev.preventDefault();
    const f = new FormData(ev.target);
    view.dp = String(f.get('dp') || '').trim();
    view.package = String(f.get('package') || '').trim();
    view.state = String(f.get('state') || '');
    view.offset = 0;
    refresh();
  });
  document.getElementById('next').addEventListener('click', function () {
    if (view.next) { view.offset = parseInt(view.next, 10); refresh(); }
  });
  document.getElementById('prev').addEventListener('click', function () {
    view.offset = Math.max(0, view.offset - PAGE); refresh();
  });
  loop();
})();
