'use strict';

// The "Matches" screen (#/matches): requests to connect waiting for the patient,
// their conversations (with unread counts) and the patients whose symptoms match
// theirs, exactly or by similarity. A match shows a pseudonym and the shared
// symptoms only. At the bottom, the patients they blocked, each to unblock. Live
// changes arrive over the chat connection (chat-client.js).
// Views follow views.js.

import {
  acceptConnection, blockPeer, connectTo, declineConnection, listBlocks, listConnections, listMatches, unblockPeer,
} from './api.js';
import { onConnectionsChanged, startChat, unseenCounts } from './chat-client.js';
import { h, mount } from './dom.js';
import {
  dateTime, errorNotice, errorText, flashNotice, hideNotice, isStale, loadingIndicator, setBusy, showNotice,
  viewHeading,
} from './ui.js';

const MODES = [
  { value: 'exact', label: 'Exact', hint: 'Patients with exactly the same symptoms as you.' },
  { value: 'ranked', label: 'Similar', hint: 'Patients with similar symptoms, most similar first.' },
];
const DEFAULT_MODE = 'exact';
const PROFILE_HASH = '#/profile';
const NO_PROFILE_STATUSES = new Set([404, 409]);
const KIND_TEXT = {
  exact: 'Exact match',
  similar: 'Similar symptoms',
};
// Who asked decides what a card says: /connections gives the direction.
const STATE_TEXT = {
  out: { pending: 'Request sent: waiting for an answer', declined: 'They declined' },
  in: { pending: 'Wants to connect', declined: 'You declined' },
};
// Only while /connections could not be read.
const UNKNOWN_DIRECTION_TEXT = { pending: 'Waiting for an answer', declined: 'Declined' };

const screen = {
  mode: DEFAULT_MODE,
};

export function matchesView(ctx) {
  ctx.setTitle('Matches');
  const page = {
    ctx,
    status: h('p', { class: 'notice notice-info', role: 'status', tabindex: '-1', hidden: true }),
    requests: h('div', { class: 'access-list' }, loadingIndicator('Loading requests…')),
    conversations: h('div', { class: 'access-list' }),
    matches: h('div', { class: 'access-list' }),
    blocked: h('div', { class: 'access-list' }),
    modeHint: h('p', { id: 'match-mode-hint', class: 'field-hint' }),
    modeButtons: [],
    // The newest connection with each peer, by pseudonym, and the match cards shown.
    peers: new Map(),
    matchCards: [],
    connectionsRead: null,
  };
  const modes = modeSwitch(page);
  startChat();
  const stop = onConnectionsChanged(() => loadConnections(page));
  ctx.signal.addEventListener('abort', stop);
  page.connectionsRead = loadConnections(page);
  loadMatches(page);
  loadBlocks(page);
  return h('section', { class: 'view' },
    viewHeading('Matches'),
    h('p', { class: 'lead' }, 'Patients whose symptoms match yours. They see only a pseudonym for you, '
      + 'and only the symptoms you share.'),
    ctx.flash && flashNotice(ctx.flash),
    page.status,
    section('match-requests', 'Requests to connect', page.requests),
    section('match-conversations', 'Your conversations', page.conversations),
    section('match-list', 'People like you', modes, page.modeHint, page.matches),
    section('match-blocked', 'Blocked patients', page.blocked));
}

function section(id, title, ...content) {
  return h('section', { class: 'access-section', 'aria-labelledby': id },
    h('h2', { id, class: 'section-title' }, title),
    content);
}

function announce(page, text) {
  showNotice(page.status, text);
  page.status.focus();
}

// ---- exact or similar

function modeSwitch(page) {
  page.modeButtons = MODES.map((mode) => {
    const button = h('button', { type: 'button', class: 'segment', 'data-mode': mode.value }, mode.label);
    button.addEventListener('click', () => {
      screen.mode = mode.value;
      showMode(page);
      loadMatches(page);
    });
    return button;
  });
  showMode(page);
  return h('div', {
    class: 'segments', role: 'group', 'aria-label': 'How to match', 'aria-describedby': 'match-mode-hint',
  }, page.modeButtons);
}

function showMode(page) {
  page.modeButtons.forEach((button) => {
    button.setAttribute('aria-pressed', String(button.dataset.mode === screen.mode));
  });
  page.modeHint.textContent = MODES.find((mode) => mode.value === screen.mode).hint;
}

// ---- connections: requests for me, conversations

async function loadConnections(page) {
  const { ctx } = page;
  try {
    const [connections, unseen] = await Promise.all([
      listConnections({ signal: ctx.signal }),
      unseenCounts().catch(() => ({})),
    ]);
    if (ctx.signal.aborted) {
      return;
    }
    page.peers = newestByPeer(connections);
    refreshMatchCards(page);
    mount(page.requests, incomingRequests(page, connections.filter(isIncomingRequest)));
    mount(page.conversations, conversationList(connections.filter((item) => item.state !== 'declined'
      && !isIncomingRequest(item)), unseen));
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(page.requests, errorNotice(errorText(error)));
      mount(page.conversations);
    }
  }
}

function isIncomingRequest(item) {
  return item.direction === 'in' && item.state === 'pending';
}

// The list is newest first.
function newestByPeer(connections) {
  const peers = new Map();
  for (const item of connections) {
    if (item.peer && !peers.has(item.peer)) {
      peers.set(item.peer, item);
    }
  }
  return peers;
}

function stateText(connection) {
  const texts = STATE_TEXT[connection.direction] ?? UNKNOWN_DIRECTION_TEXT;
  return texts[connection.state] ?? connection.state;
}

function incomingRequests(page, requests) {
  if (!requests.length) {
    return h('p', { class: 'muted' }, 'Nobody is waiting for an answer from you.');
  }
  return h('ul', { class: 'card-list' }, requests.map((item) => h('li', {}, requestCard(page, item))));
}

function requestCard(page, item) {
  const card = {
    error: errorNotice(),
    actions: h('div', { class: 'actions' }),
  };
  renderRequestActions(page, card, item);
  return h('article', { class: 'card access-card match-request', 'aria-label': `Request from ${item.peer}` },
    h('div', { class: 'access-card-head' },
      h('h3', { class: 'access-card-title pseudonym' }, item.peer),
      h('p', { class: 'access-card-meta' }, 'Asks to talk with you · ', dateTime(item.created_at))),
    card.error,
    card.actions);
}

function renderRequestActions(page, card, item) {
  const { error } = card;
  const accept = h('button', { type: 'button', class: 'button button-primary' }, 'Accept');
  const decline = h('button', { type: 'button', class: 'button' }, 'Decline');
  const block = h('button', { type: 'button', class: 'button button-danger-quiet' }, 'Block');
  accept.addEventListener('click', () => answerRequest(page, item, {
    button: accept, other: decline, error, accept: true,
  }));
  decline.addEventListener('click', () => answerRequest(page, item, {
    button: decline, other: accept, error, accept: false,
  }));
  block.addEventListener('click', () => confirmBlock(page, card, item.peer,
    () => renderRequestActions(page, card, item)));
  mount(card.actions, accept, decline, block);
}

async function answerRequest(page, item, { button, other, error, accept }) {
  hideNotice(error);
  setBusy(button, true, accept ? 'Accepting…' : 'Declining…');
  other.disabled = true;
  try {
    const answer = accept ? acceptConnection : declineConnection;
    const connection = await answer(item.id, { signal: page.ctx.signal });
    if (page.ctx.signal.aborted) {
      return;
    }
    if (accept) {
      page.ctx.navigate(chatHash(connection?.id ?? item.id));
      return;
    }
    announce(page, `You declined ${item.peer}. They are not told anything else about you.`);
    loadConnections(page);
  } catch (failure) {
    if (!isStale(page.ctx, failure)) {
      showNotice(error, errorText(failure));
      setBusy(button, false);
      other.disabled = false;
    }
  }
}

function conversationList(connections, unseen) {
  if (!connections.length) {
    return h('p', { class: 'muted' }, 'No conversations yet. Ask someone below to connect.');
  }
  return h('ul', { class: 'conversation-list' },
    connections.map((item) => h('li', {}, conversationItem(item, unseen[String(item.id)] ?? 0))));
}

// Unread: what the node holds for this device still (`unread`) plus what this
// device received while the conversation was not on screen.
function conversationItem(item, unseen) {
  if (item.state !== 'accepted') {
    return h('div', { class: 'conversation conversation-waiting' },
      h('span', { class: 'pseudonym' }, item.peer),
      h('span', { class: 'muted' }, stateText(item)));
  }
  const unread = (Number(item.unread) || 0) + unseen;
  return h('a', { class: 'conversation', href: chatHash(item.id) },
    h('span', { class: 'pseudonym' }, item.peer),
    unread
      ? h('span', { class: 'badge', 'aria-label': `${unread} unread` }, String(unread))
      : h('span', { class: 'muted' }, 'Open chat'));
}

function chatHash(id) {
  return `#/chat/${encodeURIComponent(id)}`;
}

// ---- matches

async function loadMatches(page) {
  const { ctx } = page;
  const mode = screen.mode;
  page.matches.setAttribute('aria-busy', 'true');
  mount(page.matches, loadingIndicator('Looking for matches…'));
  try {
    const matches = await listMatches(mode, { signal: ctx.signal });
    // A card tells a request sent from one to answer only once the connections are read.
    await page.connectionsRead;
    if (!ctx.signal.aborted && mode === screen.mode) {
      page.matchCards = [];
      mount(page.matches, matchList(page, matches, mode));
    }
  } catch (error) {
    if (!isStale(ctx, error) && mode === screen.mode) {
      mount(page.matches, matchesProblem(error));
    }
  } finally {
    page.matches.removeAttribute('aria-busy');
  }
}

function matchesProblem(error) {
  if (NO_PROFILE_STATUSES.has(error?.status)) {
    return h('p', { class: 'notice notice-info' }, `${errorText(error)} `,
      h('a', { href: PROFILE_HASH }, 'Add your symptoms'));
  }
  return errorNotice(errorText(error));
}

function matchList(page, matches, mode) {
  if (!matches.length) {
    return h('div', { class: 'card empty-state' },
      h('p', { class: 'empty-title' }, 'No matches yet'),
      h('p', {}, mode === 'exact'
        ? 'Nobody who can be found has exactly your symptoms. Try “Similar”.'
        : 'Nobody who can be found has symptoms close enough to yours.'),
      h('p', {}, h('a', { href: PROFILE_HASH }, 'Check your symptoms and that others may find you')));
  }
  return h('ul', { class: 'card-list' }, matches.map((match) => h('li', {}, matchCard(page, match, mode))));
}

function matchCard(page, match, mode) {
  const card = {
    error: errorNotice(),
    actions: h('div', { class: 'actions' }),
    shown: null,
  };
  renderMatchActions(page, card, match);
  page.matchCards.push({ card, match });
  const shared = [...(match.shared ?? [])].sort((x, y) => x.name.localeCompare(y.name));
  // No score: a number would tell more about the other patient than the symptoms you share.
  const similar = match.similar ?? mode === 'ranked';
  return h('article', { class: 'card access-card match-card', 'aria-label': `Match ${match.pseudonym}` },
    h('div', { class: 'match-head' },
      h('h3', { class: 'access-card-title pseudonym' }, match.pseudonym),
      h('span', { class: `match-kind${similar ? ' match-similar' : ''}` },
        similar ? KIND_TEXT.similar : KIND_TEXT.exact)),
    h('p', { class: 'access-card-meta' }, shared.length ? 'Symptoms you share:' : 'No symptom in common exactly.'),
    shared.length > 0 && h('ul', { class: 'chips shared-symptoms', 'aria-label': 'Symptoms you share' },
      shared.map((term) => h('li', { class: 'chip' }, term.name))),
    card.error,
    card.actions);
}

// What /connections says is newer than the match list, and tells who asked.
function connectionWith(page, match) {
  return page.peers.get(match.pseudonym) ?? match.connection;
}

function connectionKey(connection) {
  return connection ? `${connection.id}:${connection.state}:${connection.direction ?? ''}` : '';
}

// A connection changed (live, or answered here): the cards it concerns follow, unless
// the patient is confirming a block on that card.
function refreshMatchCards(page) {
  for (const { card, match } of page.matchCards) {
    const changed = card.shown !== connectionKey(connectionWith(page, match));
    if (changed && !card.actions.querySelector('.confirm')) {
      renderMatchActions(page, card, match);
    }
  }
}

function renderMatchActions(page, card, match) {
  const connection = connectionWith(page, match);
  card.shown = connectionKey(connection);
  const block = h('button', { type: 'button', class: 'button button-danger-quiet' }, 'Block');
  block.addEventListener('click', () => confirmBlock(page, card, match.pseudonym,
    () => renderMatchActions(page, card, match)));
  if (connection?.state === 'accepted') {
    mount(card.actions, h('a', { class: 'button button-primary', href: chatHash(connection.id) }, 'Open chat'), block);
    return;
  }
  if (connection?.state === 'pending' && connection.direction === 'in') {
    renderAnswerActions(page, card, { id: connection.id, peer: match.pseudonym }, block);
    return;
  }
  if (connection) {
    mount(card.actions, h('span', { class: 'chip chip-pending request-state', role: 'status' },
      stateText(connection)), block);
    return;
  }
  const connect = h('button', { type: 'button', class: 'button button-primary' }, 'Connect');
  connect.addEventListener('click', () => requestConnection(page, card, match, connect));
  mount(card.actions, connect, block);
}

// They asked first: answered on their card as in "Requests to connect".
function renderAnswerActions(page, card, item, block) {
  const accept = h('button', { type: 'button', class: 'button button-primary' }, 'Accept');
  const decline = h('button', { type: 'button', class: 'button' }, 'Decline');
  accept.addEventListener('click', () => answerRequest(page, item, {
    button: accept, other: decline, error: card.error, accept: true,
  }));
  decline.addEventListener('click', () => answerRequest(page, item, {
    button: decline, other: accept, error: card.error, accept: false,
  }));
  mount(card.actions,
    h('span', { class: 'chip chip-incoming request-state', role: 'status' }, STATE_TEXT.in.pending),
    accept, decline, block);
}

async function requestConnection(page, card, match, button) {
  hideNotice(card.error);
  setBusy(button, true, 'Asking…');
  try {
    const connection = await connectTo(match.pseudonym, { signal: page.ctx.signal });
    if (!page.ctx.signal.aborted) {
      match.connection = { state: 'pending', direction: 'out', ...connection };
      page.peers.set(match.pseudonym, match.connection);
      renderMatchActions(page, card, match);
      loadConnections(page);
    }
  } catch (error) {
    if (!isStale(page.ctx, error)) {
      showNotice(card.error, errorText(error));
      setBusy(button, false);
    }
  }
}

function confirmBlock(page, card, pseudonym, cancel) {
  hideNotice(card.error);
  const yes = h('button', { type: 'button', class: 'button button-danger' }, 'Block');
  const no = h('button', { type: 'button', class: 'button' }, 'Cancel');
  no.addEventListener('click', cancel);
  yes.addEventListener('click', () => block(page, card, pseudonym, yes));
  mount(card.actions, h('div', { class: 'confirm', role: 'group', 'aria-label': `Block ${pseudonym}?` },
    h('p', { class: 'confirm-question' }, `Block ${pseudonym}?`),
    h('p', { class: 'confirm-detail' }, 'You will not see each other in matches, and they cannot ask to connect '
      + 'or write to you.'),
    h('div', { class: 'actions' }, yes, no)));
  yes.focus();
}

function block(page, card, pseudonym, button) {
  const request = (options) => blockPeer(pseudonym, options);
  return changeBlock(page, card, request, { yes: button }, 'Blocking…', `You blocked ${pseudonym}.`);
}

// Blocking and unblocking: busy button, then every list that a block changes is reloaded,
// or the node's refusal is shown on the card.
async function changeBlock(page, card, request, { yes, no = null }, busyLabel, doneText) {
  hideNotice(card.error);
  setBusy(yes, true, busyLabel);
  if (no) {
    no.disabled = true;
  }
  try {
    await request({ signal: page.ctx.signal });
    if (!page.ctx.signal.aborted) {
      announce(page, doneText);
      loadMatches(page);
      loadConnections(page);
      loadBlocks(page);
    }
  } catch (error) {
    if (!isStale(page.ctx, error)) {
      showNotice(card.error, errorText(error));
      setBusy(yes, false);
      if (no) {
        no.disabled = false;
      }
    }
  }
}

// ---- blocked patients: unblocking

async function loadBlocks(page) {
  const { ctx } = page;
  mount(page.blocked, loadingIndicator('Loading blocked patients…'));
  try {
    const blocks = await listBlocks({ signal: ctx.signal });
    if (!ctx.signal.aborted) {
      mount(page.blocked, blockedList(page, blocks));
    }
  } catch (error) {
    if (!isStale(ctx, error)) {
      mount(page.blocked, errorNotice(errorText(error)));
    }
  }
}

function blockedList(page, blocks) {
  if (!blocks.length) {
    return h('p', { class: 'muted' }, 'You have not blocked anyone.');
  }
  return h('ul', { class: 'card-list' }, blocks.map((item) => h('li', {}, blockedCard(page, item))));
}

function blockedCard(page, item) {
  const card = {
    error: errorNotice(),
    actions: h('div', { class: 'actions' }),
  };
  showUnblockButton(page, card, item.pseudonym);
  return h('article', { class: 'card access-card blocked-card', 'aria-label': `Blocked ${item.pseudonym}` },
    h('div', { class: 'access-card-head' },
      h('h3', { class: 'access-card-title pseudonym' }, item.pseudonym),
      h('p', { class: 'access-card-meta' }, 'Blocked on ', dateTime(item.created_at))),
    card.error,
    card.actions);
}

function showUnblockButton(page, card, pseudonym) {
  const button = h('button', { type: 'button', class: 'button' }, 'Unblock');
  button.addEventListener('click', () => confirmUnblock(page, card, pseudonym));
  mount(card.actions, button);
  return button;
}

function confirmUnblock(page, card, pseudonym) {
  hideNotice(card.error);
  const yes = h('button', { type: 'button', class: 'button button-primary' }, 'Unblock');
  const no = h('button', { type: 'button', class: 'button' }, 'Cancel');
  no.addEventListener('click', () => showUnblockButton(page, card, pseudonym).focus());
  yes.addEventListener('click', () => unblock(page, card, pseudonym, { yes, no }));
  mount(card.actions, h('div', { class: 'confirm', role: 'group', 'aria-label': `Unblock ${pseudonym}?` },
    h('p', { class: 'confirm-question' }, `Unblock ${pseudonym}?`),
    h('p', { class: 'confirm-detail' }, 'If your symptoms still match, you may see each other in matches again '
      + 'and they can ask to connect. They are not told.'),
    h('div', { class: 'actions' }, yes, no)));
  yes.focus();
}

function unblock(page, card, pseudonym, buttons) {
  const request = (options) => unblockPeer(pseudonym, options);
  return changeBlock(page, card, request, buttons, 'Unblocking…', `You unblocked ${pseudonym}.`);
}
