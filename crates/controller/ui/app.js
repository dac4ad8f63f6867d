// ferry dashboard: a small single-page app over the controller's JSON API.
//
// Everything is built with createElement/textContent (values from the API are untrusted),
// no inline styles or handlers (the page is served with a strict CSP), hash routing, the
// bearer token kept in sessionStorage only, and the rollout status followed live over
// Server-Sent Events read with fetch() (EventSource cannot send the Authorization header).
'use strict';

(() => {
  const TOKEN_KEY = 'ferry.token';
  const API = '/api/v1';
  // A stream that says nothing (not even its 15 s keep-alive) for this long is stale.
  const STREAM_STALL_MS = 45000;
  const STREAM_RETRY_MIN_MS = 1000;
  const STREAM_RETRY_MAX_MS = 30000;

  const app = document.getElementById('app');
  const sessionBar = document.getElementById('session');
  const whoamiEl = document.getElementById('whoami');
  const logoutBtn = document.getElementById('logout');

  let me = null; // the /whoami answer of the signed-in token
  let current = null; // the AbortController of the view on screen
  let flash = null; // a message for the next view: {kind, text}

  // ---------------------------------------------------------------- DOM helpers

  // h('a', {href: '#/', testid: 'x', class: 'y', onclick: fn}, 'text', child, [children])
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [key, value] of Object.entries(attrs)) {
        if (value === null || value === undefined || value === false) continue;
        if (key === 'class') el.className = value;
        else if (key === 'text') el.textContent = value;
        else if (key === 'testid') el.dataset.testid = value;
        else if (key === 'dataset') {
          for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
        } else if (key.startsWith('on') && typeof value === 'function') {
          el.addEventListener(key.slice(2), value);
        } else el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    add(el, children);
    return el;
  }

  function add(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const enc = encodeURIComponent;

  function decode(part) {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  }

  const pad = (n) => String(n).padStart(2, '0');

  // A timestamp as local "YYYY-MM-DD HH:MM:SS", the raw value in the tooltip.
  function when(text) {
    if (!text) return h('span', {class: 'muted'}, '—');
    const d = new Date(text);
    if (Number.isNaN(d.getTime())) return h('span', null, String(text));
    const shown = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return h('time', {datetime: String(text), title: String(text)}, shown);
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2) ?? '';
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        signal.removeEventListener('abort', done);
        resolve();
      }
      signal.addEventListener('abort', done, {once: true});
    });
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, body) {
      const message = body && typeof body.error === 'string' ? body.error : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.field = body && typeof body.field === 'string' ? body.field : null;
      this.currentVersion = body && body.current_version !== undefined ? body.current_version : null;
    }
  }

  const getToken = () => sessionStorage.getItem(TOKEN_KEY) || '';

  function parseEtag(value) {
    if (!value) return null;
    const m = /^(?:W\/)?"?([^"]*)"?$/.exec(value.trim());
    return m ? m[1] : null;
  }

  // Calls the API; resolves {status, data, etag}, rejects with ApiError (or AbortError).
  // options: {body (a value, sent as JSON), raw (a string sent as is), ifMatch, signal, token}
  async function api(method, path, options = {}) {
    const headers = {
      Authorization: 'Bearer ' + (options.token ?? getToken()),
      Accept: 'application/json',
    };
    let body;
    if (options.raw !== undefined) body = options.raw;
    else if (options.body !== undefined) body = JSON.stringify(options.body);
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (options.ifMatch !== undefined && options.ifMatch !== null) {
      headers['If-Match'] = `"${options.ifMatch}"`;
    }
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body,
        signal: options.signal,
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, {error: `cannot reach the controller (${e.message})`});
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!res.ok) {
      const err = new ApiError(res.status,
        data && typeof data === 'object' ? data : {error: text.trim() || `HTTP ${res.status}`});
      if (res.status === 401 && options.token === undefined) sessionExpired();
      throw err;
    }
    return {status: res.status, data, etag: parseEtag(res.headers.get('ETag'))};
  }

  const envPath = (env) => `${API}/environments/${enc(env)}`;
  const configPath = (env, id) => `${envPath(env)}/configs/${enc(id)}`;

  const canWrite = (env) => Boolean(me) && me.role === 'admin' &&
    (me.environments === null || me.environments === undefined || me.environments.includes(env));

  // ---------------------------------------------------------------- messages

  function errorBox(err) {
    const text = err instanceof ApiError && err.field ? `${err.field}: ${err.message}` :
      (err && err.message) || String(err);
    return h('p', {class: 'message error', testid: 'error', role: 'alert'}, text);
  }

  function conflictBox(err, onReload) {
    const version = err.currentVersion ?? '?';
    return h('div', {class: 'message conflict', testid: 'conflict', role: 'alert',
      dataset: {currentVersion: version}},
    h('strong', null, 'conflict: '),
    `someone else changed it, current version is ${version}. `,
    h('button', {type: 'button', class: 'button small', testid: 'reload', onclick: onReload},
      'Reload'));
  }

  function takeFlash() {
    if (!flash) return null;
    const box = h('p', {class: `message ${flash.kind}`, testid: 'flash', role: 'status'}, flash.text);
    flash = null;
    return box;
  }

  function crumbs(...items) {
    const nav = h('nav', {class: 'crumbs', 'aria-label': 'breadcrumb'});
    items.forEach((item, i) => {
      if (i > 0) nav.append(h('span', {class: 'sep', 'aria-hidden': 'true'}, '/'));
      nav.append(item[1] ? h('a', {href: item[1]}, item[0]) : h('span', null, item[0]));
    });
    return nav;
  }

  // ---------------------------------------------------------------- session

  function showSession() {
    if (me) {
      const scope = me.environments == null ? '' : ` · ${me.environments.join(', ') || 'no environments'}`;
      whoamiEl.textContent = `${me.name} (${me.role})${scope}`;
      whoamiEl.dataset.role = me.role;
      whoamiEl.dataset.name = me.name;
      sessionBar.hidden = false;
    } else {
      whoamiEl.textContent = '';
      delete whoamiEl.dataset.role;
      delete whoamiEl.dataset.name;
      sessionBar.hidden = true;
    }
  }

  function logout() {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    showSession();
    render();
  }

  function sessionExpired() {
    if (!me && !getToken()) return;
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    showSession();
    flash = {kind: 'error', text: 'Your token was not accepted any more: sign in again.'};
    render();
  }

  function loginView(root) {
    const input = h('input', {
      type: 'password', id: 'login-token', name: 'token', autocomplete: 'off',
      spellcheck: 'false', required: true, testid: 'login-token',
    });
    const submit = h('button', {type: 'submit', class: 'button', testid: 'login-submit'}, 'Sign in');
    const problem = h('p', {class: 'message error', testid: 'error', role: 'alert', hidden: true});
    const form = h('form', {class: 'card login', autocomplete: 'off'},
      h('h1', null, 'Sign in to ferry'),
      h('label', {for: 'login-token'}, 'API token'),
      input,
      h('p', {class: 'hint'}, 'The token stays in this browser tab only (session storage).'),
      submit,
      problem);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const token = input.value.trim();
      problem.hidden = true;
      if (!token) {
        problem.textContent = 'Enter a token.';
        problem.hidden = false;
        return;
      }
      submit.disabled = true;
      try {
        const {data} = await api('GET', `${API}/whoami`, {token});
        sessionStorage.setItem(TOKEN_KEY, token);
        me = data;
        showSession();
        render();
      } catch (e) {
        problem.textContent = e.status === 401 ? 'That token is not known to the controller.' : e.message;
        problem.hidden = false;
        submit.disabled = false;
      }
    });
    add(root, [takeFlash(), form]);
    input.focus();
  }

  // ---------------------------------------------------------------- home

  async function homeView(root, signal) {
    const {data: envs} = await api('GET', `${API}/environments`, {signal});
    const list = Array.isArray(envs) ? envs : [];
    root.replaceChildren(takeFlash() ?? '', h('h1', null, 'Environments'));
    if (list.length === 0) root.append(h('p', {class: 'muted'}, 'No environments.'));
    for (const e of list) root.append(envSection(e));
  }

  function envSection(e) {
    const agents = (Array.isArray(e.agents) ? e.agents : [])
      .slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
    const table = agents.length === 0 ? h('p', {class: 'muted'}, 'No live agents.') :
      h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
        h('thead', null, h('tr', null,
          h('th', null, 'Name'), h('th', null, 'IP'), h('th', null, 'Started'), h('th', null, 'Version'))),
        h('tbody', null, agents.map((a) => h('tr', {testid: 'agent-row', dataset: {agent: a.id}},
          h('td', {class: 'mono'}, a.id),
          h('td', {class: 'mono'}, a.addr ?? ''),
          h('td', null, when(a.start_time)),
          h('td', null, a.version ?? ''))))));
    return h('section', {class: 'card', testid: `env-${e.env}`, dataset: {env: e.env}},
      h('div', {class: 'card-head'},
        h('h2', null, e.env),
        h('span', {class: 'muted'}, `${agents.length} live agent${agents.length === 1 ? '' : 's'}`),
        h('a', {class: 'button secondary', href: `#/env/${enc(e.env)}`, testid: 'configs-link'},
          'Configurations')),
      table);
  }

  // ---------------------------------------------------------------- environment

  function hostnames(doc) {
    if (doc && doc.kind === 'ingress' && Array.isArray(doc.virtual_hosts)) {
      return doc.virtual_hosts.map((v) => v && v.hostname).filter(Boolean).join(', ');
    }
    return '';
  }

  async function envView(root, signal, env) {
    const {data} = await api('GET', `${envPath(env)}/configs`, {signal});
    const configs = Array.isArray(data) ? data : [];
    const head = h('div', {class: 'page-head'}, h('h1', null, `Configurations of ${env}`));
    if (canWrite(env)) {
      head.append(h('a', {class: 'button', href: `#/env/${enc(env)}/new`, testid: 'new-config'},
        'New configuration'));
    }
    const body = configs.length === 0 ? h('p', {class: 'muted'}, 'No configurations yet.') :
      h('div', {class: 'table-wrap'}, h('table', {class: 'data'},
        h('thead', null, h('tr', null, ['ID', 'Kind', 'Hostnames', 'Version', 'Changed by', 'Changed at']
          .map((t) => h('th', null, t)))),
        h('tbody', null, configs.map((c) => h('tr', {testid: 'config-row', dataset: {id: c.id}},
          h('td', {class: 'mono'}, h('a', {href: `#/env/${enc(env)}/config/${enc(c.id)}`,
            testid: 'config-link', dataset: {id: c.id}}, c.id)),
          h('td', null, c.document && c.document.kind ? c.document.kind : '?',
            c.deleted ? h('span', {class: 'badge state-failed'}, 'deleted') : null),
          h('td', null, hostnames(c.document) || h('span', {class: 'muted'}, '—')),
          h('td', null, String(c.version)),
          h('td', null, c.changed_by ?? ''),
          h('td', null, when(c.changed_at)))))));
    root.replaceChildren(takeFlash() ?? '',
      crumbs(['Environments', '#/'], [env, null]), head, h('section', {class: 'card'}, body));
  }

  // ---------------------------------------------------------------- configuration + rollout

  async function configView(root, signal, env, id) {
    const base = `#/env/${enc(env)}/config/${enc(id)}`;
    let record;
    try {
      record = (await api('GET', configPath(env, id), {signal})).data;
    } catch (e) {
      if (e.status !== 404) throw e;
      // A deleted configuration may still be restored from its history.
      root.replaceChildren(crumbs(['Environments', '#/'], [env, `#/env/${enc(env)}`], [id, null]),
        errorBox(e),
        h('p', null, h('a', {href: `${base}/history`, testid: 'history-link'}, 'Its history')));
      return;
    }

    const meta = h('dl', {class: 'meta'});
    const docPre = h('pre', {class: 'code', testid: 'document'});
    const deletedNote = h('p', {class: 'message error', hidden: true}, 'This configuration is deleted.');
    const actions = h('div', {class: 'actions'});
    const messages = h('div', {class: 'messages'});

    function showRecord() {
      meta.replaceChildren(
        h('dt', null, 'ID'), h('dd', {class: 'mono'}, record.id),
        h('dt', null, 'Kind'), h('dd', null, record.document && record.document.kind ? record.document.kind : '?'),
        h('dt', null, 'Hostnames'), h('dd', null, hostnames(record.document) || '—'),
        h('dt', null, 'Version'), h('dd', {testid: 'config-version'}, String(record.version)),
        h('dt', null, 'Changed by'), h('dd', null, record.changed_by ?? ''),
        h('dt', null, 'Changed at'), h('dd', null, when(record.changed_at)));
      docPre.textContent = pretty(record.document);
      deletedNote.hidden = !record.deleted;
      actions.replaceChildren();
      if (canWrite(env) && !record.deleted) {
        actions.append(h('a', {class: 'button', href: `${base}/edit`, testid: 'edit-button'}, 'Edit'));
      }
      actions.append(h('a', {class: 'button secondary', href: `${base}/history`, testid: 'history-link'},
        'History'));
      if (canWrite(env) && !record.deleted) {
        actions.append(h('button', {type: 'button', class: 'button danger', testid: 'delete-button',
          onclick: askDelete}, 'Delete'));
      }
    }

    function askDelete() {
      messages.replaceChildren(h('div', {class: 'message warning', role: 'alert'},
        `Delete configuration ${record.id} (version ${record.version})? Agents will remove it. `,
        h('button', {type: 'button', class: 'button danger small', testid: 'delete-confirm',
          onclick: doDelete}, 'Delete'),
        ' ',
        h('button', {type: 'button', class: 'button secondary small',
          onclick: () => messages.replaceChildren()}, 'Cancel')));
    }

    async function doDelete() {
      messages.replaceChildren();
      try {
        const {data} = await api('DELETE', configPath(env, id), {ifMatch: record.version, signal});
        flash = {kind: 'success', text: `Deleted configuration ${id} (version ${data && data.version}).`};
        location.hash = `#/env/${enc(env)}`;
      } catch (e) {
        if (e.name === 'AbortError') return;
        messages.replaceChildren(e.status === 412 ? conflictBox(e, () => render()) : errorBox(e));
      }
    }

    // The rollout panel.
    const streamState = h('span', {class: 'stream-state', testid: 'stream-state'}, 'connecting');
    const summary = h('p', {class: 'summary', testid: 'rollout-summary'}, 'Waiting for the rollout status…');
    const publish = h('p', {class: 'publish', testid: 'publish-state'});
    const grid = h('div', {class: 'rollout-grid', testid: 'rollout-grid'});
    const cells = new Map(); // agent -> cell parts
    let seenEvent = false;
    let refreshing = false;

    function setStream(state, detail) {
      streamState.textContent = state;
      streamState.className = `stream-state ${state}`;
      streamState.dataset.state = state;
      streamState.title = detail || '';
    }

    function cellFor(agent) {
      let c = cells.get(agent);
      if (c) return c;
      c = {
        name: h('span', {class: 'agent-name mono'}, agent),
        badge: h('span', {class: 'badge'}),
        ip: h('div', {class: 'cell-ip mono'}),
        version: h('div', {class: 'cell-version'}),
        message: h('div', {class: 'cell-message', testid: 'rollout-message'}),
      };
      c.el = h('div', {class: 'cell', testid: 'rollout-cell', dataset: {agent}},
        h('div', {class: 'cell-head'}, c.name, c.badge), c.ip, c.version, c.message);
      cells.set(agent, c);
      return c;
    }

    function showRollout(r) {
      if (!r || typeof r !== 'object') return;
      const agents = (Array.isArray(r.agents) ? r.agents : [])
        .filter((a) => a && a.agent !== undefined)
        .sort((a, b) => String(a.agent).localeCompare(String(b.agent)));
      const s = r.summary || {};
      summary.textContent = `Version ${r.version ?? '?'}: ${s.applied ?? 0} of ${s.live ?? agents.length} ` +
        `live agents applied, ${s.failed ?? 0} failed, ${s.pending ?? 0} pending` +
        (s.complete ? ' — complete' : '');
      summary.dataset.version = r.version ?? '';
      summary.dataset.complete = s.complete ? 'true' : 'false';
      summary.className = `summary ${s.failed ? 'has-failed' : s.complete ? 'is-complete' : 'is-pending'}`;

      publish.replaceChildren();
      publish.dataset.published = r.published ? 'true' : 'false';
      if (r.published) publish.append(h('span', {class: 'badge state-applied'}, 'published'));
      else publish.append(h('span', {class: 'badge state-pending'}, 'not published'));
      if (r.publish_pending) {
        publish.append(' ', h('span', {class: 'publish-pending', testid: 'publish-pending'},
          `publish pending: ${r.publish_pending}`));
      }
      // A rollout in waves: the wave, the agents per version, and why it stopped.
      const w = r.waves;
      if (w && typeof w === 'object') {
        const sizes = Array.isArray(w.sizes) ? w.sizes : [];
        const perVersion = Object.entries(w.agents_per_version || {})
          .map(([v, n]) => `${n} on version ${v}`).join(', ');
        publish.append(' ', h('span', {class: 'waves', testid: 'waves', dataset: {phase: String(w.phase)}},
          `waves: ${String(w.phase).replace('_', ' ')}, wave ${w.wave} of ${sizes.length}` +
          (perVersion ? ` (${perVersion})` : '')));
        if (w.reason) publish.append(' ', h('span', {class: 'waves-reason', testid: 'waves-reason'}, String(w.reason)));
      }

      const seen = new Set();
      const order = [];
      for (const a of agents) {
        const name = String(a.agent);
        seen.add(name);
        const c = cellFor(name);
        const state = ['applied', 'failed', 'pending', 'waiting', 'rolled_back'].includes(a.state) ? a.state : 'pending';
        const applied = a.applied_version === null || a.applied_version === undefined ? '' : String(a.applied_version);
        c.el.className = `cell state-${state}`;
        c.el.dataset.state = state;
        c.el.dataset.version = applied;
        c.el.title = a.message ? String(a.message) : '';
        c.badge.textContent = state;
        c.badge.className = `badge state-${state}`;
        c.ip.textContent = a.ip ?? '';
        c.version.textContent = applied === '' ? 'no version applied' : `applied version ${applied}`;
        c.message.textContent = a.message ? String(a.message) : '';
        c.message.hidden = !a.message;
        order.push(c.el);
      }
      for (const [name, c] of cells) {
        if (!seen.has(name)) {
          c.el.remove();
          cells.delete(name);
        }
      }
      if (order.length === 0) {
        grid.replaceChildren(h('p', {class: 'muted'}, 'No live agents in this environment.'));
      } else {
        // Re-append in order (moves existing nodes; no flicker, no re-creation).
        if (grid.firstChild && !cells.has(grid.firstChild.dataset && grid.firstChild.dataset.agent)) {
          grid.replaceChildren();
        }
        for (const el of order) grid.append(el);
      }
      // A newer version than the one on screen: show its document too.
      if (typeof r.version === 'number' && r.version > record.version) refreshRecord();
    }

    async function refreshRecord() {
      if (refreshing) return;
      refreshing = true;
      try {
        const {data} = await api('GET', configPath(env, id), {signal});
        if (data && data.version >= record.version) {
          record = data;
          showRecord();
        }
      } catch (e) {
        if (e.name !== 'AbortError' && e.status === 404) {
          messages.replaceChildren(errorBox(e));
        }
      } finally {
        refreshing = false;
      }
    }

    showRecord();
    root.replaceChildren(takeFlash() ?? '',
      crumbs(['Environments', '#/'], [env, `#/env/${enc(env)}`], [id, null]),
      h('div', {class: 'page-head'}, h('h1', null, 'Configuration'), actions),
      messages,
      deletedNote,
      h('section', {class: 'card'},
        h('div', {class: 'card-head'}, h('h2', null, 'Rollout'), streamState),
        summary, publish, grid),
      h('section', {class: 'card'}, h('h2', null, 'Details'), meta),
      h('section', {class: 'card'}, h('h2', null, 'Document'), docPre));

    // The first status quickly by a plain GET (ignored once the stream has spoken), then
    // every change from the event stream.
    api('GET', `${configPath(env, id)}/status`, {signal}).then(({data}) => {
      if (!seenEvent) showRollout(data);
    }).catch(() => {});
    followEvents(`${configPath(env, id)}/status/events`, signal, {
      state: setStream,
      event(type, data) {
        if (type !== 'rollout' && type !== 'message') return;
        let rollout;
        try {
          rollout = JSON.parse(data);
        } catch {
          return;
        }
        seenEvent = true;
        showRollout(rollout);
      },
    });
  }

  // Server-Sent Events framing: lines ending in \n, \r\n or \r; a blank line ends an event;
  // `data:` lines are joined with \n; lines starting with ':' are comments (keep-alives).
  function sseParser(dispatch) {
    let buffer = '';
    let type = '';
    let data = [];

    function line(text) {
      if (text === '') {
        if (data.length > 0) dispatch(type || 'message', data.join('\n'));
        type = '';
        data = [];
        return;
      }
      if (text[0] === ':') return;
      const colon = text.indexOf(':');
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? '' : text.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }

    return (chunk, end) => {
      buffer += chunk;
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i];
        if (c !== '\n' && c !== '\r') continue;
        // A trailing \r may be the first half of \r\n: wait for the next chunk.
        if (c === '\r' && i === buffer.length - 1 && !end) break;
        line(buffer.slice(start, i));
        if (c === '\r' && buffer[i + 1] === '\n') i++;
        start = i + 1;
      }
      buffer = buffer.slice(start);
    };
  }

  // Follows an event stream until `signal` aborts, reconnecting with a growing delay when
  // the stream ends, fails or stalls.
  async function followEvents(url, signal, handlers) {
    let delay = STREAM_RETRY_MIN_MS;
    while (!signal.aborted) {
      const conn = new AbortController();
      const stop = () => conn.abort();
      signal.addEventListener('abort', stop, {once: true});
      let stalled = false;
      let watchdog = null;
      const arm = () => {
        clearTimeout(watchdog);
        watchdog = setTimeout(() => {
          stalled = true;
          conn.abort();
        }, STREAM_STALL_MS);
      };
      let problem = 'the stream ended';
      try {
        handlers.state(delay === STREAM_RETRY_MIN_MS ? 'connecting' : 'reconnecting');
        arm();
        const res = await fetch(url, {
          headers: {Authorization: 'Bearer ' + getToken(), Accept: 'text/event-stream'},
          signal: conn.signal,
          cache: 'no-store',
          credentials: 'omit',
        });
        if (res.status === 401) {
          sessionExpired();
          return;
        }
        if (!res.ok || !res.body) {
          let text = '';
          try {
            text = await res.text();
            const body = JSON.parse(text);
            if (body && body.error) text = body.error;
          } catch {
            // keep the plain text
          }
          problem = `HTTP ${res.status}${text ? ': ' + text : ''}`;
        } else {
          handlers.state('live');
          const push = sseParser((type, data) => {
            delay = STREAM_RETRY_MIN_MS;
            handlers.event(type, data);
          });
          const reader = res.body.getReader();
          const decoder = new TextDecoder();
          for (;;) {
            const {done, value} = await reader.read();
            if (done) {
              push(decoder.decode(), true);
              break;
            }
            arm();
            push(decoder.decode(value, {stream: true}), false);
          }
        }
      } catch (e) {
        if (signal.aborted) return;
        problem = stalled ? 'the stream went silent' : e.message || String(e);
      } finally {
        clearTimeout(watchdog);
        signal.removeEventListener('abort', stop);
        conn.abort();
      }
      if (signal.aborted) return;
      handlers.state('reconnecting', problem);
      await sleep(delay + Math.floor(Math.random() * (delay / 4)), signal);
      delay = Math.min(delay * 2, STREAM_RETRY_MAX_MS);
    }
  }

  // ---------------------------------------------------------------- create / edit

  const SAMPLE = {
    kind: 'ingress',
    virtual_hosts: [{
      hostname: 'app.example.com',
      paths: [
        {path: '/', service: 'app'},
        {path: '/api', backends: ['127.0.0.1:8080'], connect_timeout_seconds: 5, read_timeout_seconds: 60},
      ],
    }],
  };

  async function editView(root, signal, env, id) {
    const creating = id === null;
    const back = creating ? `#/env/${enc(env)}` : `#/env/${enc(env)}/config/${enc(id)}`;
    let record = null;
    if (!creating) record = (await api('GET', configPath(env, id), {signal})).data;

    const title = creating ? `New configuration in ${env}` : 'Edit configuration';
    const trail = creating ?
      crumbs(['Environments', '#/'], [env, `#/env/${enc(env)}`], ['new', null]) :
      crumbs(['Environments', '#/'], [env, `#/env/${enc(env)}`], [id, back], ['edit', null]);

    if (!canWrite(env)) {
      root.replaceChildren(trail, h('h1', null, title),
        h('p', {class: 'message warning', testid: 'read-only'},
          'Your token may read this environment but not change it.'),
        h('p', null, h('a', {href: back}, 'Back')));
      return;
    }

    const editor = h('textarea', {
      class: 'editor', id: 'doc-editor', testid: 'doc-editor', spellcheck: 'false',
      autocomplete: 'off', rows: '24', 'aria-label': 'Document (JSON)',
    });
    editor.value = pretty(creating ? SAMPLE : record.document);
    const problems = h('div', {class: 'messages', testid: 'edit-messages'});
    const save = h('button', {type: 'submit', class: 'button', testid: 'save'},
      creating ? 'Create' : 'Save');
    const format = h('button', {type: 'button', class: 'button secondary', testid: 'format'}, 'Format JSON');
    const form = h('form', {class: 'card edit-form'},
      h('label', {for: 'doc-editor'}, 'Document (JSON): ',
        h('span', {class: 'hint'}, 'kind "ingress" with virtual_hosts, or kind "opaque" with data')),
      editor,
      problems,
      h('div', {class: 'actions'}, save, format, h('a', {class: 'button secondary', href: back}, 'Cancel')));

    editor.addEventListener('input', () => editor.classList.remove('invalid'));
    format.addEventListener('click', () => {
      problems.replaceChildren();
      try {
        editor.value = pretty(JSON.parse(editor.value));
      } catch (e) {
        problems.replaceChildren(errorBox(new Error(`invalid JSON: ${e.message}`)));
      }
    });

    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      problems.replaceChildren();
      const text = editor.value;
      let doc;
      try {
        doc = JSON.parse(text);
      } catch (e) {
        problems.replaceChildren(errorBox(new Error(`invalid JSON: ${e.message}`)));
        return;
      }
      if (!doc || typeof doc !== 'object' || Array.isArray(doc)) {
        problems.replaceChildren(errorBox(new Error('the document must be a JSON object')));
        return;
      }
      save.disabled = true;
      try {
        const res = creating ?
          await api('POST', `${envPath(env)}/configs`, {raw: text, signal}) :
          await api('PUT', configPath(env, id), {raw: text, ifMatch: record.version, signal});
        const saved = res.data || {};
        let note = `Saved version ${saved.version}.`;
        if (saved.published === false) {
          note += ` Not published to the agents yet${saved.publish_error ? ': ' + saved.publish_error : ''}.`;
        }
        flash = {kind: saved.published === false ? 'warning' : 'success', text: note};
        location.hash = `#/env/${enc(env)}/config/${enc(saved.id ?? id)}`;
      } catch (e) {
        if (e.name === 'AbortError') return;
        save.disabled = false;
        if (e.status === 412) {
          problems.replaceChildren(conflictBox(e, () => render()));
        } else if (e.field) {
          editor.classList.add('invalid');
          problems.replaceChildren(h('div', {class: 'message field-error', testid: 'field-error',
            role: 'alert', dataset: {field: e.field}},
          h('code', {class: 'field-path'}, e.field), ': ', h('span', {class: 'field-reason'}, e.message)));
        } else {
          problems.replaceChildren(errorBox(e));
        }
      }
    });

    const info = creating ? null : h('p', {class: 'muted'},
      `Editing version ${record.version} (changed by ${record.changed_by ?? '?'}). ` +
      'Saving fails with a conflict if someone else changes it meanwhile.');
    root.replaceChildren(trail, h('h1', null, title), info ?? '', form);
    editor.focus();
  }

  // ---------------------------------------------------------------- history + diff

  // Line diff by longest common subsequence: [{op: ' ' | '-' | '+', text}].
  function lineDiff(a, b) {
    let start = 0;
    while (start < a.length && start < b.length && a[start] === b[start]) start++;
    let endA = a.length;
    let endB = b.length;
    while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) {
      endA--;
      endB--;
    }
    const out = [];
    for (let i = 0; i < start; i++) out.push({op: ' ', text: a[i]});
    const A = a.slice(start, endA);
    const B = b.slice(start, endB);
    const n = A.length;
    const m = B.length;
    if (n * m > 16e6) {
      // Too large for the table: everything in the middle changed.
      for (const text of A) out.push({op: '-', text});
      for (const text of B) out.push({op: '+', text});
    } else {
      // lcs[i][j]: length of the longest common subsequence of A[i..] and B[j..].
      const lcs = [];
      for (let i = 0; i <= n; i++) lcs.push(new Uint32Array(m + 1));
      for (let i = n - 1; i >= 0; i--) {
        for (let j = m - 1; j >= 0; j--) {
          lcs[i][j] = A[i] === B[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
        }
      }
      let i = 0;
      let j = 0;
      while (i < n && j < m) {
        if (A[i] === B[j]) {
          out.push({op: ' ', text: A[i]});
          i++;
          j++;
        } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
          out.push({op: '-', text: A[i++]});
        } else {
          out.push({op: '+', text: B[j++]});
        }
      }
      while (i < n) out.push({op: '-', text: A[i++]});
      while (j < m) out.push({op: '+', text: B[j++]});
    }
    for (let i = endA; i < a.length; i++) out.push({op: ' ', text: a[i]});
    return out;
  }

  const DIFF_CONTEXT = 4;

  function renderDiff(pre, fromText, toText) {
    const lines = lineDiff(fromText.split('\n'), toText.split('\n'));
    const changed = lines.map((l) => l.op !== ' ');
    // Unchanged lines farther than DIFF_CONTEXT from any change fold into one marker.
    const near = new Array(lines.length).fill(false);
    changed.forEach((c, i) => {
      if (!c) return;
      for (let k = Math.max(0, i - DIFF_CONTEXT); k <= Math.min(lines.length - 1, i + DIFF_CONTEXT); k++) {
        near[k] = true;
      }
    });
    const nodes = [];
    let added = 0;
    let removed = 0;
    for (let i = 0; i < lines.length;) {
      const l = lines[i];
      if (l.op === ' ' && !near[i]) {
        let k = i;
        while (k < lines.length && lines[k].op === ' ' && !near[k]) k++;
        nodes.push(h('span', {class: 'diff-line diff-skip'}, `  … ${k - i} unchanged line${k - i === 1 ? '' : 's'}`));
        i = k;
        continue;
      }
      if (l.op === '+') added++;
      if (l.op === '-') removed++;
      const cls = l.op === '+' ? 'diff-add' : l.op === '-' ? 'diff-del' : 'diff-same';
      nodes.push(h('span', {class: `diff-line ${cls}`}, `${l.op} ${l.text}`));
      i++;
    }
    if (added === 0 && removed === 0) {
      pre.replaceChildren(h('span', {class: 'diff-line diff-skip'}, 'The two documents are the same.'));
    } else {
      pre.replaceChildren(...nodes);
    }
    pre.dataset.added = String(added);
    pre.dataset.removed = String(removed);
    return {added, removed};
  }

  async function historyView(root, signal, env, id) {
    const base = `#/env/${enc(env)}/config/${enc(id)}`;
    const messages = h('div', {class: 'messages', testid: 'history-messages'});
    const tableHolder = h('div', {class: 'table-wrap'});
    const fromSel = h('select', {testid: 'diff-from', id: 'diff-from'});
    const toSel = h('select', {testid: 'diff-to', id: 'diff-to'});
    const diffPre = h('pre', {class: 'code diff', testid: 'diff'});
    const diffStats = h('span', {class: 'muted', testid: 'diff-stats'});
    const section = h('section', {class: 'card', testid: 'history'});
    let versions = [];
    let currentVersion = null;

    function updateDiff() {
      const from = versions.find((r) => String(r.version) === fromSel.value);
      const to = versions.find((r) => String(r.version) === toSel.value);
      if (!from || !to) {
        diffPre.replaceChildren();
        diffStats.textContent = '';
        return;
      }
      const {added, removed} = renderDiff(diffPre, pretty(from.document), pretty(to.document));
      diffPre.dataset.from = String(from.version);
      diffPre.dataset.to = String(to.version);
      diffStats.textContent = `version ${from.version} → ${to.version}: +${added} −${removed}`;
    }
    fromSel.addEventListener('change', updateDiff);
    toSel.addEventListener('change', updateDiff);

    async function rollback(version, button) {
      messages.replaceChildren();
      for (const b of section.querySelectorAll('button')) b.disabled = true;
      try {
        const {data} = await api('POST', `${configPath(env, id)}/rollback?version=${enc(version)}`,
          {ifMatch: currentVersion, signal});
        await load();
        const unpublished = data.published === false ?
          ` Not published to the agents yet${data.publish_error ? ': ' + data.publish_error : ''}.` : '';
        messages.replaceChildren(h('div', {class: 'message success', testid: 'rolled-back',
          role: 'status', dataset: {version: data.version}},
        `Rolled back to version ${version}: version ${data.version} is now current.${unpublished} `,
        h('a', {href: base, testid: 'config-page-link'}, 'See its rollout')));
      } catch (e) {
        if (e.name === 'AbortError') return;
        for (const b of section.querySelectorAll('button')) b.disabled = false;
        messages.replaceChildren(e.status === 412 ? conflictBox(e, () => render()) : errorBox(e));
        button.focus();
      }
    }

    function fillSelect(sel, chosen) {
      sel.replaceChildren(...versions.map((r) => h('option', {value: String(r.version)},
        `version ${r.version}${r.deleted ? ' (deleted)' : ''} — ${r.changed_by ?? '?'}`)));
      if (chosen !== undefined) sel.value = String(chosen);
    }

    async function load() {
      const {data} = await api('GET', `${configPath(env, id)}/history`, {signal});
      versions = (Array.isArray(data) ? data : []).slice().sort((a, b) => a.version - b.version);
      const last = versions[versions.length - 1];
      currentVersion = last ? last.version : null;
      section.dataset.currentVersion = currentVersion ?? '';
      const writer = canWrite(env);
      tableHolder.replaceChildren(h('table', {class: 'data'},
        h('thead', null, h('tr', null, ['Version', 'Changed by', 'Changed at', 'State', writer ? '' : null]
          .filter((t) => t !== null).map((t) => h('th', null, t)))),
        h('tbody', null, versions.slice().reverse().map((r) => h('tr',
          {testid: 'history-row', dataset: {version: r.version}, class: r.deleted ? 'deleted' : null},
          h('td', null, String(r.version)),
          h('td', null, r.changed_by ?? ''),
          h('td', null, when(r.changed_at)),
          h('td', null, r.deleted ? h('span', {class: 'badge state-failed'}, 'deleted') :
            r.version === currentVersion ? h('span', {class: 'badge state-applied'}, 'current') : ''),
          writer ? h('td', null, r.deleted || r.version === currentVersion ? '' :
            h('button', {type: 'button', class: 'button small', testid: `rollback-${r.version}`,
              dataset: {version: r.version},
              onclick: (ev) => rollback(r.version, ev.currentTarget)},
            `Roll back to version ${r.version}`)) : null)))));
      const prev = versions.length > 1 ? versions[versions.length - 2].version : currentVersion;
      const keepFrom = versions.some((r) => String(r.version) === fromSel.value) ? fromSel.value : prev;
      fillSelect(fromSel, keepFrom);
      fillSelect(toSel, currentVersion);
      updateDiff();
    }

    section.append(h('h2', null, 'Versions'), tableHolder);
    root.replaceChildren(
      crumbs(['Environments', '#/'], [env, `#/env/${enc(env)}`], [id, base], ['history', null]),
      h('div', {class: 'page-head'}, h('h1', null, 'History'),
        h('a', {class: 'button secondary', href: base, testid: 'config-page-link'}, 'Configuration')),
      messages,
      section,
      h('section', {class: 'card'},
        h('h2', null, 'Compare versions'),
        h('div', {class: 'diff-pickers'},
          h('label', {for: 'diff-from'}, 'From '), fromSel,
          h('label', {for: 'diff-to'}, ' to '), toSel,
          diffStats),
        diffPre));
    await load();
  }

  // ---------------------------------------------------------------- routing

  function parseRoute() {
    const parts = (location.hash || '#/').replace(/^#\/?/, '').split('/')
      .filter((p) => p !== '').map(decode);
    if (parts.length === 0) return {view: homeView, args: []};
    if (parts[0] === 'env' && parts.length >= 2) {
      const env = parts[1];
      if (parts.length === 2) return {view: envView, args: [env]};
      if (parts.length === 3 && parts[2] === 'new') return {view: editView, args: [env, null]};
      if (parts[2] === 'config' && parts.length >= 4) {
        const id = parts[3];
        if (parts.length === 4) return {view: configView, args: [env, id]};
        if (parts.length === 5 && parts[4] === 'edit') return {view: editView, args: [env, id]};
        if (parts.length === 5 && parts[4] === 'history') return {view: historyView, args: [env, id]};
      }
    }
    return null;
  }

  function render() {
    if (current) current.abort();
    current = new AbortController();
    const {signal} = current;
    const root = h('div', {class: 'view'});
    app.replaceChildren(root);
    if (!me) {
      loginView(root);
      return;
    }
    const route = parseRoute();
    if (!route) {
      root.append(h('h1', null, 'Not found'), h('p', null, h('a', {href: '#/'}, 'Back to the environments')));
      return;
    }
    root.append(h('p', {class: 'muted loading', testid: 'loading'}, 'Loading…'));
    route.view(root, signal, ...route.args).catch((e) => {
      if (signal.aborted || e.name === 'AbortError') return;
      root.replaceChildren(errorBox(e), h('p', null, h('a', {href: '#/'}, 'Back to the environments')));
    });
  }

  async function start() {
    logoutBtn.addEventListener('click', logout);
    window.addEventListener('hashchange', render);
    if (getToken()) {
      try {
        me = (await api('GET', `${API}/whoami`, {token: getToken()})).data;
      } catch (e) {
        if (e.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          flash = {kind: 'error', text: 'Your token was not accepted any more: sign in again.'};
        } else {
          flash = {kind: 'error', text: e.message};
        }
      }
    }
    showSession();
    render();
  }

  start();
})();
