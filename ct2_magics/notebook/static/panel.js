// The chat panel's front end (an anywidget ES module): the same code in JupyterLab 4, Notebook 7 and VS Code.
// What it shows comes from the kernel as synced state: the messages as sanitised HTML (made by
// ct2_magics/notebook/markup.py; this module never builds markup from model text), the status line as text.
// What the user does goes to the kernel as messages (model.send): the typed text rides in the message itself.
const SEND_KEYS = (e) => e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey;
const ANSWER_WAIT_MS = 8000; // no answer from the kernel in this time: say why that may be
const SIDE_GIVE_UP_MS = 30000; // JupyterLab, but no side area after this time: none will come
const GONE = 'The kernel restarted or stopped, so this panel is no longer connected. Run the cell that opened it ' +
  'again (after %load_ext ct2_magics): the chat comes back from its saved copy.';

// Keys typed in the panel's fields are the panel's: JupyterLab must not read Ctrl+Enter as "run cell" or
// Shift+Enter as "run and advance". Installed once per page, in the capture phase of `window`, which runs
// before JupyterLab's own listeners; the browser still types the key (only propagation is stopped).
function onKey(e) {
  const t = e.target;
  if (!t || !t.closest || !t.closest('.ct2-panel') || !['TEXTAREA', 'INPUT'].includes(t.tagName)) return;
  e.stopImmediatePropagation();
  if (SEND_KEYS(e) && t.classList.contains('ct2-input')) {
    e.preventDefault();
    t.dispatchEvent(new CustomEvent('ct2-send'));
  }
}

function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v; // text, never markup
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  el.append(...children);
  return el;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) { // no clipboard API (an insecure origin) or no permission: the old way
    const area = h('textarea', { class: 'ct2-copy-buffer' });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand('copy'); } catch (err) { ok = false; }
    area.remove();
    return ok;
  }
}

// The notebook the panel belongs to, where the host is JupyterLab or Notebook 7 (their widget manager holds
// the document's context); null elsewhere (VS Code), where "Insert" copies instead.
function notebookOf(model) {
  const context = model.widget_manager && model.widget_manager.context;
  const shared = context && context.model && context.model.sharedModel;
  return shared && typeof shared.insertCell === 'function' ? shared : null;
}

// Where "Insert as a cell below" puts the code: below the active cell of the notebook in view when that
// is this panel's notebook (the panel in the side area), else below the cell that shows this panel.
function insertIndex(el, shared) {
  const count = shared.cells.length;
  const own = el.closest('.jp-Cell');
  const ownIndex = own ? Number(own.dataset.windowedListIndex) : NaN;
  if (own && Number.isInteger(ownIndex) && ownIndex < count) return ownIndex + 1;
  for (const nb of document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook')) {
    const active = nb.querySelector('.jp-Cell.jp-mod-active');
    const i = active ? Number(active.dataset.windowedListIndex) : NaN;
    if (nb.querySelectorAll('.jp-Cell').length === count && Number.isInteger(i) && i < count) return i + 1;
  }
  return count;
}

function panelView(model, el) {
  if (!window.__ct2PanelKeys) {
    window.__ct2PanelKeys = true;
    window.addEventListener('keydown', onKey, true);
  }
  let seq = 0;
  let gone = false;
  let lastDraft = model.get('draft');
  const waiting = new Map(); // seq -> {timer, text}
  const shown = []; // [{key, node}] of the messages on screen

  const banner = h('div', { class: 'ct2-banner', role: 'alert', hidden: '' });
  const list = h('div', { class: 'ct2-messages' });
  const scroller = h('div', { class: 'ct2-scroller' }, list);
  const input = h('textarea', { class: 'ct2-input', rows: '3', placeholder: model.get('placeholder'),
    title: `${model.get('shortcut')} sends`, 'aria-label': 'Message' });
  input.value = lastDraft;
  const button = (label, cls, title, action) => h('button', { class: `ct2-button ${cls}`, type: 'button', title,
    onclick: action }, label);
  const send = button('Send', 'ct2-send ct2-primary', `Send (${model.get('shortcut')})`, () => doSend());
  const stop = button('Stop', 'ct2-stop ct2-warning', 'Stop the model now; the partial answer is kept', () => act('stop'));
  const retry = button('Retry', 'ct2-retry', 'Ask the last question again', () => act('retry', withSettings()));
  const undo = button('Undo', 'ct2-undo', 'Drop the last exchange', () => act('undo'));
  const fresh = button('New chat', 'ct2-new', "Clear this chat's history (Undo new chat brings it back)", () => act('new_chat'));
  const unclear = button('Undo new chat', 'ct2-undo-new', 'Bring back the exchanges New chat cleared', () => act('undo_new_chat'));
  const status = h('div', { class: 'ct2-status', role: 'status' });
  const system = h('textarea', { class: 'ct2-system', rows: '2', placeholder: 'none' });
  const fields = {};
  const grid = h('div', { class: 'ct2-fields' });
  for (const f of model.get('fields')) {
    fields[f.name] = h('input', { type: 'text', class: 'ct2-field', placeholder: 'model default', title: f.help,
      name: f.name });
    grid.append(h('label', { class: 'ct2-label', title: f.help }, h('span', { text: f.label }), fields[f.name]));
  }
  const settings = h('details', { class: 'ct2-settings' }, h('summary', { text: 'Settings' }),
    h('label', { class: 'ct2-label ct2-system-label' }, h('span', { text: 'System prompt' }), system), grid);
  const panel = h('div', { class: 'ct2-panel' }, banner, scroller, input,
    h('div', { class: 'ct2-buttons' }, send, stop, retry, undo, fresh, unclear), status, settings);
  el.append(panel);

  function say(text, error) {
    status.textContent = text;
    status.classList.toggle('ct2-error', !!error);
  }

  function disconnect(reason) {
    if (gone) return;
    gone = true;
    for (const w of waiting.values()) clearTimeout(w.timer);
    waiting.clear();
    banner.textContent = reason;
    banner.hidden = false;
    panel.classList.add('ct2-gone');
    say('Disconnected from the kernel: run the cell that opened this panel again.', true);
    update();
  }

  function kernelStatus() {
    const k = model.widget_manager && model.widget_manager.kernel;
    return k ? k.status : null;
  }

  function act(action, extra = {}) {
    if (gone) return false;
    const n = ++seq;
    try {
      model.send({ action, seq: n, ...extra });
    } catch (e) { // the comm is closed: the kernel that held this panel is gone
      disconnect(GONE);
      return false;
    }
    const timer = setTimeout(() => {
      if (!waiting.has(n)) return;
      waiting.get(n).said = true;
      const busy = kernelStatus() === 'busy';
      say(busy ? 'The kernel is busy running a cell; the panel acts when it is done.'
        : 'No answer from the kernel. If it restarted, run the cell that opened this panel again.', !busy);
    }, ANSWER_WAIT_MS);
    waiting.set(n, { timer, text: extra.text });
    return true;
  }

  function withSettings() {
    const options = {};
    for (const [name, field] of Object.entries(fields)) options[name] = field.value;
    return { options, system: system.value };
  }

  function doSend() {
    if (!gone && !model.get('busy')) act('send', { text: input.value, ...withSettings() });
  }

  function saveSettings() {
    model.set('options', withSettings().options);
    model.set('system_prompt', system.value);
    model.save_changes();
  }

  function addCodeActions(body) {
    for (const pre of body.querySelectorAll('pre.ct2-code')) {
      const code = () => pre.textContent.replace(/\n$/, '');
      const box = h('div', { class: 'ct2-codebox' });
      const copy = h('button', { class: 'ct2-code-action', type: 'button', title: 'Copy the code',
        onclick: async () => say(await copyText(code()) ? 'Copied the code.' : 'The browser did not allow copying; select the code and copy it.') }, 'Copy');
      const insert = h('button', { class: 'ct2-code-action', type: 'button', title: 'Insert the code as a new cell below (it does not run)',
        onclick: async () => {
          const shared = notebookOf(model);
          if (shared) {
            const at = insertIndex(el, shared);
            shared.insertCell(at, { cell_type: 'code', source: code(), metadata: {} });
            say(`Inserted the code as cell ${at + 1}; it has not run.`);
          } else {
            const ok = await copyText(code());
            say(ok ? 'This front end lets the panel add no cell: the code is copied; paste it into a new cell.'
              : 'This front end lets the panel add no cell, and copying was refused: select the code and copy it.');
          }
        } }, 'Insert as a cell below');
      pre.replaceWith(box);
      box.append(h('div', { class: 'ct2-code-actions' }, copy, insert), pre);
    }
  }

  function typeset(body) {
    const ts = model.widget_manager && model.widget_manager.rendermime && model.widget_manager.rendermime.latexTypesetter;
    if (ts && body.querySelector('.math')) {
      try { ts.typeset(body); } catch (e) { /* the math stays as its TeX source */ }
    }
  }

  function showMessages() {
    const settled = model.get('messages');
    const items = settled.concat(model.get('pending'));
    const atEnd = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
    items.forEach((m, i) => {
      const final = i < settled.length;
      const key = `${m.role}\u0000${final}\u0000${m.html}`;
      if (shown[i] && shown[i].key === key) return;
      const body = h('div', { class: 'ct2-body jp-RenderedHTMLCommon' });
      body.innerHTML = m.html; // sanitised in the kernel by markup.py (nh3); never text of this module's making
      if (final) {
        if (m.role === 'assistant') addCodeActions(body);
        typeset(body);
      }
      const node = h('div', { class: `ct2-msg ct2-${m.role}`, 'data-status': m.status || '' }, body);
      if (shown[i]) shown[i].node.replaceWith(node);
      else list.append(node);
      shown[i] = { key, node };
    });
    for (const old of shown.splice(items.length)) old.node.remove();
    if (atEnd) scroller.scrollTop = scroller.scrollHeight;
  }

  function update() {
    const busy = model.get('busy');
    const empty = model.get('messages').length === 0;
    send.disabled = gone || busy;
    stop.disabled = gone || !busy;
    for (const b of [retry, undo, fresh]) b.disabled = gone || busy || empty;
    unclear.hidden = !(model.get('cleared') > 0);
    unclear.disabled = gone || busy;
    input.disabled = system.disabled = gone;
    for (const f of Object.values(fields)) f.disabled = gone;
  }

  function showSettings() {
    const options = model.get('options');
    for (const [name, field] of Object.entries(fields)) {
      if (document.activeElement !== field) field.value = options[name] || '';
    }
    if (document.activeElement !== system) system.value = model.get('system_prompt');
  }

  function showDraft() {
    const draft = model.get('draft');
    if (input.value === '' || input.value === lastDraft) input.value = draft; // never over what the user typed since
    lastDraft = draft;
  }

  function onMessage(msg) {
    if (!msg || msg.type !== 'ack') return;
    const w = waiting.get(msg.seq);
    if (!w) return;
    clearTimeout(w.timer);
    waiting.delete(msg.seq);
    if (msg.clear && input.value === w.text) input.value = '';
    if (w.said) showStatus(); // the kernel answered after all: its status line again
  }

  input.addEventListener('ct2-send', doSend);
  system.addEventListener('change', saveSettings);
  for (const f of Object.values(fields)) f.addEventListener('change', saveSettings);
  const showStatus = () => { if (!gone) say(model.get('status'), model.get('status_error')); };
  const handlers = {
    'change:messages': () => { showMessages(); update(); },
    'change:pending': showMessages,
    'change:busy': update,
    'change:cleared': update,
    'change:status': showStatus,
    'change:status_error': showStatus,
    'change:options': showSettings,
    'change:system_prompt': showSettings,
    'change:draft': showDraft,
    'msg:custom': onMessage,
    comm_live_update: () => disconnect(GONE), // the widget manager lost the kernel (a restart)
  };
  for (const [name, fn] of Object.entries(handlers)) model.on(name, fn);
  const kernel = model.widget_manager && model.widget_manager.kernel;
  const onStatus = (_, s) => { if (s === 'dead' || s === 'restarting' || s === 'autorestarting') disconnect(GONE); };
  if (kernel && kernel.statusChanged) kernel.statusChanged.connect(onStatus);

  showMessages();
  showSettings();
  showStatus();
  update();
  return () => {
    for (const [name, fn] of Object.entries(handlers)) model.off(name, fn);
    if (kernel && kernel.statusChanged) kernel.statusChanged.disconnect(onStatus);
    for (const w of waiting.values()) clearTimeout(w.timer);
  };
}

// A panel opened with --side shows in JupyterLab's side area (jupyterlab-sidecar); its cell shows one line
// saying so. Where no side area opens (Notebook 7, VS Code), the cell shows the panel itself.
async function sideOpened(model) {
  const manager = model.widget_manager;
  if (!document.querySelector('.jp-LabShell') || !manager || !model.get('sidecar_id')) return false;
  try {
    const sidecar = await manager.get_model(model.get('sidecar_id'));
    if (!sidecar || !sidecar.created) return false;
    const giveUp = new Promise((resolve) => setTimeout(() => resolve(false), SIDE_GIVE_UP_MS));
    return await Promise.race([sidecar.created.then(() => true), giveUp]); // resolved once it is in the side area
  } catch (e) {
    return false;
  }
}

function sideLine(model, el) {
  const line = h('div', { class: 'ct2-side-line', text: 'Opening the chat panel in the side area…' });
  el.append(line);
  let cleanup = null;
  let gone = false;
  const showHere = (why) => {
    line.textContent = why;
    if (!cleanup && !gone) cleanup = panelView(model, el);
  };
  sideOpened(model).then((opened) => {
    if (gone) return;
    if (!opened) {
      showHere("The side area did not open here (it is JupyterLab's), so the chat panel is in this cell.");
      return;
    }
    line.textContent = `The chat panel for chat '${model.get('chat_name')}' is open in the side area, on the right. `;
    line.append(h('button', { class: 'ct2-code-action', type: 'button', title: 'Show the panel in this cell as well',
      onclick: (e) => { e.target.remove(); showHere(line.textContent); } }, 'Show it here too'));
  });
  return () => { gone = true; if (cleanup) cleanup(); };
}

// The line shown under the panel explains "model not found" where the panel cannot show; while a view of the
// panel is on the page it has nothing to explain, so a style sheet hides it (whenever it arrives).
function hideNote(model) {
  const id = String(model.get('note_id')).replace(/[^0-9a-f]/g, '');
  if (!id) return () => {};
  const style = h('style', { text: `[data-ct2-note="${id}"], .jp-OutputArea-child:has([data-ct2-note="${id}"]) { display: none; }` });
  document.head.append(style);
  return () => style.remove();
}

function render({ model, el }) {
  const shown = hideNote(model);
  const view = model.get('side') && !el.closest('.jupyterlab-sidecar') ? sideLine(model, el) : panelView(model, el);
  return () => { shown(); view(); };
}

export default { render };
