// The chat panel's front-end code (an anywidget ES module). Ctrl+Enter in the panel's input sends:
// the handler is installed once per page in the capture phase of `window`, before JupyterLab's own
// Ctrl+Enter (run cell) sees the key. It appends U+0004 and fires the input event, so the send signal
// rides in the same ordered state sync as the text.
function onKey(e) {
  if (e.key !== 'Enter' || !(e.ctrlKey || e.metaKey) || e.altKey) return;
  const t = e.target;
  if (!t || t.tagName !== 'TEXTAREA' || !t.closest('.ct2-input')) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  t.value += String.fromCharCode(4);
  t.dispatchEvent(new Event('input', {bubbles: true}));
}
export default {
  render({ el }) {
    el.style.display = 'none';
    if (!window.__ct2ChatKeys) {
      window.__ct2ChatKeys = true;
      window.addEventListener('keydown', onKey, true);
    }
  },
};
