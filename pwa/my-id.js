'use strict';

// The "My ID" screen (#/my-id): the patient's consortium id, the one every member hospital
// knows them by. Patients are found by name only at their home hospital; a doctor anywhere
// else types, pastes or scans this id in "Find a patient". The id comes from the session, so
// the screen also works offline (at a reception desk without signal). The QR code is drawn
// here as SVG by the vendored generator: nothing is fetched to make it.

import qrcode from './vendor/qrcode-generator.esm.js';
import { h } from './dom.js';
import { flashNotice, viewHeading } from './ui.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const QR_TYPE_AUTO = 0; // the smallest QR version that holds the id
const QR_ERROR_CORRECTION = 'M';
const QR_QUIET_ZONE = 4; // light modules around the code, as readers expect
const QR_LABEL = 'QR code of your ID';
const COPY_LABEL = 'Copy';
const COPIED_MESSAGE = 'Copied';
const SELECTED_MESSAGE = 'Copying is not possible here: your ID is selected, copy it with your device’s menu.';
const EXPLANATION = 'Show this to a doctor at any hospital of the network. They find you by this ID, '
  + 'not by your name; it opens nothing without your consent.';

export function myIdView(ctx) {
  ctx.setTitle('My ID');
  const id = ctx.user?.id ?? '';
  const idText = h('code', { class: 'my-id-text', id: 'my-id-text' }, id);
  const status = h('p', { class: 'copy-status', role: 'status', 'aria-live': 'polite' });
  const copy = h('button', { type: 'button', class: 'button button-primary' }, COPY_LABEL);
  copy.addEventListener('click', () => copyId(id, idText, status));
  return h('section', { class: 'view my-id' },
    viewHeading('My ID'),
    h('p', { class: 'lead' }, EXPLANATION),
    ctx.flash && flashNotice(ctx.flash),
    h('div', { class: 'card my-id-card' },
      qrSvg(id),
      idText,
      h('div', { class: 'my-id-actions' }, copy, status)),
    h('p', {}, h('a', { href: '#/recovery-key' }, 'Recovery key'), ': in case you forget your password'),
    h('p', {}, h('a', { href: '#/escrow' }, 'Help from your hospital'), ': if you lose both'),
    h('p', {}, h('a', { href: '#/security' }, 'Sign-in security: two-factor sign-in')),
    h('p', {}, h('a', { href: '#/devices' }, 'Your devices'), ': where you use the chat, and removing a lost one'));
}

async function copyId(id, idText, status) {
  status.textContent = '';
  try {
    await navigator.clipboard.writeText(id);
    status.textContent = COPIED_MESSAGE;
  } catch {
    // No clipboard (an insecure origin, or permission refused): select the id instead.
    selectText(idText);
    status.textContent = SELECTED_MESSAGE;
  }
}

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection?.removeAllRanges();
  selection?.addRange(range);
}

// One path of unit squares, one per dark module, on a light background with its quiet zone.
export function qrSvg(text, label = QR_LABEL) {
  const code = qrcode(QR_TYPE_AUTO, QR_ERROR_CORRECTION);
  code.addData(text, 'Byte');
  code.make();
  const count = code.getModuleCount();
  const size = count + QR_QUIET_ZONE * 2;
  const svg = svgElement('svg', {
    class: 'qr-code', viewBox: `0 0 ${size} ${size}`, role: 'img', 'aria-label': label,
    'shape-rendering': 'crispEdges', 'data-module-count': count,
  });
  svg.append(
    svgElement('rect', { class: 'qr-light', width: size, height: size }),
    svgElement('path', { class: 'qr-dark', d: darkModulesPath(code, count) }));
  return svg;
}

function darkModulesPath(code, count) {
  const squares = [];
  for (let row = 0; row < count; row += 1) {
    for (let col = 0; col < count; col += 1) {
      if (code.isDark(row, col)) {
        squares.push(`M${col + QR_QUIET_ZONE} ${row + QR_QUIET_ZONE}h1v1h-1z`);
      }
    }
  }
  return squares.join('');
}

function svgElement(tag, attrs) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    element.setAttribute(name, String(value));
  }
  return element;
}
