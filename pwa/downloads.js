'use strict';

// Copies the patient takes away (docs/fhir.md): the whole record as a FHIR R4 Bundle, the access
// log as CSV or as FHIR AuditEvents. Each button fetches its file with the token (api.js), saves it
// under the name the server gave it from an object URL (files.js), and says how it went beside it.
// Nothing is kept: the file goes to the browser's downloads and the object URL is revoked.

import { h } from './dom.js';
import { saveBlob } from './files.js';
import { formatBytes } from './format.js';
import { errorNotice, errorText, hideNotice, isStale, setBusy, showNotice } from './ui.js';

// A section with a title, a sentence and one button per file. Each of `files` is
// { label, busyLabel, failure, fetch }: fetch({ signal, onProgress }) answers { blob, filename };
// `failure` starts the sentence shown when it fails.
export function downloadPanel(ctx, { id, title, text, files }) {
  const textId = `${id}-text`;
  const parts = {
    status: h('p', { class: 'download-status', role: 'status' }),
    progress: h('span', { class: 'download-progress', 'aria-hidden': 'true' }),
    error: errorNotice(),
  };
  const buttons = files.map((file) => downloadButton(ctx, file, { ...parts, textId }));
  return h('section', { class: 'card download-panel', 'aria-labelledby': id },
    h('h2', { id, class: 'section-title' }, title),
    h('p', { id: textId, class: 'download-text' }, text),
    h('div', { class: 'actions' }, buttons),
    h('div', { class: 'download-state' }, parts.status, parts.progress),
    parts.error);
}

function downloadButton(ctx, file, parts) {
  const button = h('button', { type: 'button', class: 'button', 'aria-describedby': parts.textId }, file.label);
  button.addEventListener('click', () => downloadFile(ctx, file, { button, ...parts }));
  return button;
}

async function downloadFile(ctx, file, { button, status, progress, error }) {
  const hadFocus = document.activeElement === button;
  hideNotice(error);
  setBusy(button, true, file.busyLabel);
  status.textContent = file.busyLabel;
  // Seen, not read out: a screen reader hears the start and the end, not every chunk.
  const onProgress = (received) => {
    progress.textContent = ` ${formatBytes(received)}`;
  };
  try {
    const { blob, filename } = await file.fetch({ signal: ctx.signal, onProgress });
    if (!ctx.signal.aborted) {
      saveBlob(blob, filename);
      status.textContent = `Saved ${filename} (${formatBytes(blob.size)}). Look for it in your downloads.`;
    }
  } catch (failure) {
    if (!isStale(ctx, failure)) {
      status.textContent = '';
      showNotice(error, `${file.failure} ${errorText(failure)}`);
    }
  } finally {
    progress.textContent = '';
    setBusy(button, false);
    // A disabled button loses focus; give it back so the keyboard stays where it was.
    if (hadFocus && button.isConnected && (!document.activeElement || document.activeElement === document.body)) {
      button.focus();
    }
  }
}
