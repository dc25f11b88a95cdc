'use strict';

// The "Chat" screen (#/chat/<conversation>): one end-to-end encrypted conversation
// with a match. The engine (chat-client.js) does the handshake and the crypto;
// this screen shows its state (the status line, a changed-key warning, errors)
// and the messages (the newest hundred, older ones on request), and sends what the
// patient writes. The screen fills the window (app.js, `fill`): the heading on top,
// the messages scrolling in between, the composer at the bottom, so neither the
// composer nor a banner above can hide the newest message. Views follow views.js.

import { blockPeer } from './api.js';
import {
  MAX_MESSAGE_CHARS, PHASES, acknowledgeNewDevices, retryConversation, sendText, trustNewKey, watchConversation,
} from './chat-client.js';
import { h, mount } from './dom.js';
import { formatClock, formatDateTime, groupedFingerprint } from './format.js';
import { LINK_STATES } from './socket.js';
import { errorNotice, errorText, hideNotice, isStale, setBusy, showNotice, viewHeading } from './ui.js';

const MATCHES_HASH = '#/matches';
const ELSEWHERE_TEXT = 'Your chat is open in another tab or window of this app. Close it to chat here.';
const NOT_SENT_YET = 'It is kept on this phone and sent as soon as the connection is back.';
const FINGERPRINT_CHARS = 16;
const KEY_CHANGED_HINT = 'Confirm the new key above before you send anything.';
const MESSAGES_PAGE = 100;
// Within this many pixels of the end the patient is reading the newest messages:
// new ones scroll into view. Further up, a button offers to jump to them instead.
const END_SLACK_PX = 48;
const LINE_BREAK_INPUTS = new Set(['insertLineBreak', 'insertParagraph']);
const LINK_TEXT = {
  [LINK_STATES.connecting]: 'Connecting to the chat server…',
  [LINK_STATES.offline]: 'Offline: reconnecting…',
};
const PHASE_TEXT = {
  [PHASES.starting]: 'Opening the conversation…',
  [PHASES.verifying]: 'Checking their key against the ledger…',
  [PHASES.ledger]: 'Their chat key is waiting for the ledger: it is trusted once it is in a block. Checking again…',
  [PHASES.handshaking]: 'Setting up end-to-end encryption: waiting for the other side to open the app…',
};

export function chatView(ctx, conversationId) {
  ctx.setTitle('Chat');
  const page = {
    ctx,
    id: conversationId,
    title: viewHeading('Chat'),
    status: h('p', { class: 'chat-status', role: 'status' }),
    warning: h('div', { class: 'key-warning', role: 'alert', hidden: true }),
    problem: h('div', { class: 'chat-problem', hidden: true }),
    blocking: h('div', { class: 'chat-block' }),
    errors: h('ul', { class: 'chat-errors', 'aria-label': 'Problems with received messages' }),
    joined: h('p', { class: 'notice notice-info joined-note', hidden: true }),
    devices: h('div', { class: 'notice notice-info device-notice', role: 'status', hidden: true }),
    list: h('ol', { class: 'message-list', 'aria-label': 'Messages', 'aria-live': 'polite', tabindex: '-1' }),
    older: h('button', { type: 'button', class: 'button older-messages', hidden: true }, 'Show older messages'),
    // Focusable, so the keyboard scrolls it too.
    scroller: h('div', { class: 'chat-scroll', role: 'region', 'aria-label': 'Conversation', tabindex: '0' }),
    jump: h('button', { type: 'button', class: 'button button-primary new-messages', hidden: true }),
    unseenBelow: 0,
    // Is the patient reading the end of the conversation? Kept up to date while they scroll.
    following: true,
    peer: null,
    blockShown: null,
    shownKeys: [],
    hidden: null,
    shownErrors: 0,
    view: null,
  };
  const composer = messageComposer(page);
  page.composer = composer;
  page.older.addEventListener('click', () => showOlder(page));
  page.jump.addEventListener('click', () => {
    scrollToEnd(page);
    page.scroller.focus({ preventScroll: true });
  });
  page.scroller.addEventListener('scroll', () => {
    page.following = isAtEnd(page);
    if (page.following) {
      hideJump(page);
    }
  }, { passive: true });
  page.scroller.append(page.joined, page.older, page.list);
  // The space for messages changes as the screen is laid out, a banner comes or goes,
  // the keyboard opens or the composer grows: the end stays in view for a reader there.
  const resized = new ResizeObserver(() => {
    if (page.following) {
      scrollToEnd(page);
    }
  });
  resized.observe(page.scroller);
  const stop = watchConversation(conversationId, (view) => render(page, view));
  ctx.signal.addEventListener('abort', () => {
    stop();
    resized.disconnect();
  });
  return h('section', { class: 'view chat-view' },
    h('div', { class: 'chat-top' },
      h('div', { class: 'chat-head' },
        h('a', { class: 'back-link', href: MATCHES_HASH }, '← Matches'),
        page.blocking),
      page.title,
      page.status),
    page.warning,
    page.devices,
    page.problem,
    page.errors,
    h('div', { class: 'chat-body' }, page.scroller, page.jump),
    composer.form);
}

function render(page, view) {
  if (page.ctx.signal.aborted) {
    return;
  }
  page.view = view;
  if (view.peer !== page.peer) {
    page.peer = view.peer;
    page.shownKeys = [];
  }
  if (view.peer) {
    page.title.textContent = `Chat with ${view.peer}`;
    page.ctx.setTitle(`Chat with ${view.peer}`);
  }
  page.status.textContent = statusText(view);
  page.status.dataset.phase = view.phase;
  renderWarning(page, view);
  renderDevices(page, view);
  renderProblem(page, view);
  renderErrors(page, view);
  renderJoined(page, view);
  renderMessages(page, view);
  renderBlock(page, view);
  page.composer.input.disabled = !view.canSend;
  page.composer.send.disabled = !view.canSend || page.composer.busy;
  page.composer.hint.hidden = !(view.phase === PHASES.ready && view.keyWarning);
}

// Messages from before this device joined stay on the devices that received them.
function renderJoined(page, view) {
  page.joined.hidden = !view.joinedAt;
  if (view.joinedAt) {
    page.joined.textContent = `This device joined the conversation on ${formatDateTime(view.joinedAt)}: it shows `
      + 'messages from then on. Earlier ones stay on the devices that received them.';
  }
}

function statusText(view) {
  if (view.phase === PHASES.elsewhere) {
    return ELSEWHERE_TEXT;
  }
  if (view.phase === PHASES.unsupported) {
    return 'The chat cannot run in this browser: see the problem below.';
  }
  if (view.link.state === LINK_STATES.refused) {
    return `Cannot connect to the chat server: ${view.link.problem}`;
  }
  if (view.link.state !== LINK_STATES.online) {
    return LINK_TEXT[view.link.state];
  }
  if (view.phase === PHASES.ready && view.fingerprint) {
    return `Online · end-to-end encrypted · their key matches the ledger (${fingerprintText(view.fingerprint)})`;
  }
  if (view.phase === PHASES.failed) {
    return 'Not connected: see the problem below.';
  }
  return PHASE_TEXT[view.phase] ?? PHASE_TEXT[PHASES.starting];
}

function fingerprintText(fingerprint) {
  return groupedFingerprint(String(fingerprint ?? '').slice(0, FINGERPRINT_CHARS));
}

// Shown, and sending blocked, until the patient confirms the new key (it survives a reload).
function renderWarning(page, view) {
  const warning = view.keyWarning;
  page.warning.hidden = !warning;
  if (!warning) {
    mount(page.warning);
    return;
  }
  const trust = h('button', { type: 'button', class: 'button' }, 'I trust the new key');
  trust.addEventListener('click', () => {
    trust.disabled = true;
    trustNewKey(page.id).catch(() => {
      trust.disabled = false;
    });
  });
  mount(page.warning,
    h('p', { class: 'key-warning-title' }, `${view.peer ?? 'Your contact'}’s chat key has changed`),
    h('p', {}, 'They may have a new phone or browser, or have logged in somewhere else. The new key is the one '
      + 'on the ledger. If you did not expect this, compare the fingerprints with them another way (in person, '
      + 'by phone) before you trust it. Until you do, you cannot send messages here.'),
    h('dl', { class: 'key-warning-prints' },
      h('dt', {}, 'Key you trusted before'),
      h('dd', { class: 'hash fingerprint-previous' }, groupedFingerprint(warning.previous)),
      h('dt', {}, warning.since ? `New key (registered ${formatDateTime(warning.since)})` : 'New key'),
      h('dd', { class: 'hash fingerprint-current' }, groupedFingerprint(warning.current))),
    trust);
}

// The peer started using another device: said once, with its key's fingerprint.
function renderDevices(page, view) {
  const prints = view.newDevices ?? [];
  const shown = prints.join(' ');
  page.devices.hidden = !prints.length;
  if (page.devices.dataset.shown === shown) {
    return;
  }
  page.devices.dataset.shown = shown;
  if (!prints.length) {
    mount(page.devices);
    return;
  }
  const ok = h('button', { type: 'button', class: 'button' }, 'OK');
  ok.addEventListener('click', () => {
    ok.disabled = true;
    acknowledgeNewDevices(page.id).catch(() => {
      ok.disabled = false;
    });
  });
  const who = view.peer ?? 'Your contact';
  mount(page.devices,
    h('p', {}, prints.length === 1 ? `${who} started using the chat on another device.`
      : `${who} started using the chat on ${prints.length} other devices.`),
    h('ul', { class: 'device-prints' },
      ...prints.map((print) => h('li', { class: 'hash' }, groupedFingerprint(print)))),
    ok);
}

function renderProblem(page, view) {
  const failed = view.phase === PHASES.failed;
  page.problem.hidden = !failed && view.phase !== PHASES.unsupported;
  if (view.phase === PHASES.unsupported) {
    mount(page.problem, h('p', { class: 'notice notice-error', role: 'alert' }, view.problem));
    return;
  }
  if (!failed) {
    mount(page.problem);
    return;
  }
  const retry = h('button', { type: 'button', class: 'button' }, 'Try again');
  retry.addEventListener('click', () => retryConversation(page.id));
  mount(page.problem, h('p', { class: 'notice notice-error', role: 'alert' }, view.problem), retry);
}

// Only new problems are added: alerts already shown are not announced again.
function renderErrors(page, view) {
  if (view.errors.length < page.shownErrors) {
    mount(page.errors);
    page.shownErrors = 0;
  }
  page.errors.append(...view.errors.slice(page.shownErrors)
    .map((item) => h('li', { class: 'notice notice-error', role: 'alert' }, item.text)));
  page.shownErrors = view.errors.length;
}

// New messages are appended (the list is a live region: only they are announced);
// anything else, such as one arriving out of order, redraws the list. The newest
// message comes into view if the patient was reading the end of the conversation or
// wrote it; otherwise "New message" below offers to go to it.
function renderMessages(page, view) {
  const rows = shownRows(page, view.messages);
  page.older.hidden = rows.length === view.messages.length;
  const keys = rows.map((row) => row.key);
  if (!keys.length) {
    mount(page.list, h('li', { class: 'muted message-empty' }, view.phase === PHASES.ready
      ? 'No messages yet. Say hello!'
      : 'Messages appear here once the encrypted conversation is set up.'));
    page.shownKeys = [];
    return;
  }
  const shown = page.shownKeys;
  const grows = shown.length > 0 && shown.length <= keys.length && shown.every((key, i) => key === keys[i]);
  const added = grows ? rows.slice(shown.length) : [];
  if (grows) {
    page.list.append(...added.map((row) => messageItem(view, row)));
  } else {
    mount(page.list, rows.map((row) => messageItem(view, row)));
  }
  page.shownKeys = keys;
  if (!shown.length || page.following || added.some((row) => row.mine)) {
    scrollToEnd(page);
  } else if (added.length) {
    showJump(page, added.length);
  }
}

function isAtEnd(page) {
  const { scroller } = page;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= END_SLACK_PX;
}

function scrollToEnd(page) {
  page.scroller.scrollTop = page.scroller.scrollHeight;
  page.following = true;
  hideJump(page);
}

function showJump(page, more) {
  page.unseenBelow += more;
  const count = page.unseenBelow;
  mount(page.jump, count === 1 ? 'New message' : `${count} new messages`, h('span', { 'aria-hidden': 'true' }, ' ↓'));
  page.jump.hidden = false;
}

function hideJump(page) {
  page.unseenBelow = 0;
  page.jump.hidden = true;
}

// A long history would make a slow, endless page: the newest messages first. The
// oldest ones stay hidden by number, not by key, as a message not sent yet changes
// key once it is; whatever comes after is shown, so new ones still appear.
function shownRows(page, messages) {
  if (!messages.length) {
    page.hidden = null;
    return messages;
  }
  if (page.hidden === null) {
    page.hidden = Math.max(0, messages.length - MESSAGES_PAGE);
  }
  return messages.slice(page.hidden);
}

// From this device's own store (no server call). The message that was on top stays
// where it was on screen: the older ones are above it, to scroll up to.
function showOlder(page) {
  const { view } = page;
  const start = Math.min(page.hidden ?? 0, view.messages.length);
  if (start === 0) {
    return;
  }
  page.hidden = Math.max(0, start - MESSAGES_PAGE);
  const older = view.messages.slice(page.hidden, start);
  const anchor = page.list.firstElementChild;
  const top = anchor.getBoundingClientRect().top;
  page.list.prepend(...older.map((row) => messageItem(view, row)));
  page.shownKeys = [...older.map((row) => row.key), ...page.shownKeys];
  page.scroller.scrollTop += anchor.getBoundingClientRect().top - top;
  if (page.hidden === 0) {
    page.older.hidden = true;
    page.list.focus({ preventScroll: true });
  }
}

function messageItem(view, row) {
  const who = row.mine ? 'You' : view.peer ?? 'Them';
  const kind = row.mine ? 'message-mine' : 'message-theirs';
  return h('li', { class: `message ${kind}${row.pending ? ' message-pending' : ''}` },
    h('span', { class: 'visually-hidden' }, `${who}: `),
    h('p', { class: 'message-text' }, row.text),
    row.pending
      ? h('span', { class: 'message-time' }, 'Not sent yet')
      : row.sent_at && h('time', { class: 'message-time', datetime: row.sent_at }, formatClock(row.sent_at)));
}

// ---- writing

function messageComposer(page) {
  const input = h('textarea', {
    id: 'chat-message', name: 'message', class: 'input composer-input', rows: 2, maxlength: MAX_MESSAGE_CHARS,
    placeholder: 'Write a message', 'aria-label': 'Message', disabled: true, enterkeyhint: 'send',
  });
  const send = h('button', { type: 'submit', class: 'button button-primary', disabled: true }, 'Send');
  const error = errorNotice();
  const hint = h('p', { class: 'field-hint composer-hint', hidden: true }, KEY_CHANGED_HINT);
  const composer = { input, send, error, hint, busy: false, newLine: false };
  composer.form = h('form', { class: 'composer', novalidate: true, 'aria-label': 'Write a message' },
    error, hint, h('div', { class: 'composer-row' }, input, send));
  composer.form.addEventListener('submit', (event) => {
    event.preventDefault();
    submitMessage(page, composer);
  });
  // Enter sends, and so does the phone keyboard's Send key (enterkeyhint), which
  // some keyboards deliver as a line break to insert rather than as a key press;
  // Shift+Enter starts a new line. Not while an input method is composing a word.
  input.addEventListener('keydown', (event) => {
    composer.newLine = event.key === 'Enter' && event.shiftKey;
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.form.requestSubmit();
    }
  });
  input.addEventListener('beforeinput', (event) => {
    if (!LINE_BREAK_INPUTS.has(event.inputType) || event.isComposing) {
      return;
    }
    if (composer.newLine) {
      composer.newLine = false;
      return;
    }
    event.preventDefault();
    composer.form.requestSubmit();
  });
  return composer;
}

async function submitMessage(page, composer) {
  const text = composer.input.value.trim();
  if (!text || composer.busy) {
    return;
  }
  hideNotice(composer.error);
  composer.busy = true;
  setBusy(composer.send, true, 'Sending…');
  try {
    const result = await sendText(page.id, text);
    if (!page.ctx.signal.aborted) {
      composer.input.value = '';
      if (!result.sent) {
        showNotice(composer.error, `${result.problem} ${NOT_SENT_YET}`);
      }
    }
  } catch (error) {
    if (!page.ctx.signal.aborted) {
      showNotice(composer.error, errorText(error));
    }
  } finally {
    composer.busy = false;
    setBusy(composer.send, false);
    if (page.view) {
      render(page, page.view);
    }
    composer.input.focus();
  }
}

// ---- blocking

// A Block button, then a confirmation; blocking ends the conversation for both.
function renderBlock(page, view) {
  if (!view.peer || page.blockShown === view.peer) {
    return;
  }
  page.blockShown = view.peer;
  showBlockButton(page, view.peer);
}

function showBlockButton(page, peer) {
  const button = h('button', { type: 'button', class: 'button button-danger-quiet' }, 'Block');
  button.addEventListener('click', () => confirmBlock(page, peer));
  mount(page.blocking, button);
}

function confirmBlock(page, peer) {
  const error = errorNotice();
  const yes = h('button', { type: 'button', class: 'button button-danger' }, 'Block');
  const no = h('button', { type: 'button', class: 'button' }, 'Cancel');
  no.addEventListener('click', () => showBlockButton(page, peer));
  yes.addEventListener('click', () => block(page, peer, { yes, no, error }));
  mount(page.blocking, h('div', { class: 'confirm', role: 'group', 'aria-label': `Block ${peer}?` },
    h('p', { class: 'confirm-question' }, `Block ${peer}?`),
    h('p', { class: 'confirm-detail' }, 'This conversation ends. You will not see each other in matches, and '
      + 'they cannot ask to connect or write to you.'),
    error,
    h('div', { class: 'actions' }, yes, no)));
  yes.focus();
}

async function block(page, peer, { yes, no, error }) {
  hideNotice(error);
  setBusy(yes, true, 'Blocking…');
  no.disabled = true;
  try {
    await blockPeer(peer, { signal: page.ctx.signal });
    if (!page.ctx.signal.aborted) {
      page.ctx.navigate(MATCHES_HASH, { flash: `You blocked ${peer}.` });
    }
  } catch (failure) {
    if (!isStale(page.ctx, failure)) {
      showNotice(error, errorText(failure));
      setBusy(yes, false);
      no.disabled = false;
    }
  }
}
