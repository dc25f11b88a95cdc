'use strict';

// The chat's engine, shared by the screens (docs/chat-protocol.md, docs/api.md
// "Matching and chat"). It owns this user's chat identity key, the /chat link
// (socket.js), the handshakes and the sessions (chat-crypto.js), and the
// decrypted conversation kept on this device (chat-store.js). Screens watch it
// and never touch keys.
//
// Handshakes: the patient who asked to connect (the "initiator" role from "join")
// starts one when they have no session. The other patient starts one only when
// they lost a session they had (they logged out, see chat-store.js); the other
// side answers it. When both start at once, the hello of the patient who asked
// to connect wins. Every handshake checks the peer's identity key against the
// key on the ledger.
//
// What arrives is handled in order, one item at a time per conversation, and
// acknowledged once handled, also when it could not be read: a bad item is
// reported once instead of coming back for ever.

import { getChatKey, registerChatKey } from './api.js';
import {
  ChatError, ERROR_TEXT, generateIdentity, keyChange, onConfirm, onReply, openText, publicKeyB64, sealMessage,
  startInitiator, startResponder,
} from './chat-crypto.js';
import * as store from './chat-store.js';
import { currentToken, currentUser } from './session.js';
import {
  LINK_STATES, closeChatLink, linkState, onChatEvent, onLinkState, openChatLink, request,
} from './socket.js';

export const PHASES = {
  starting: 'starting',
  verifying: 'verifying',
  handshaking: 'handshaking',
  ready: 'ready',
  failed: 'failed',
  elsewhere: 'elsewhere',
};
export const MAX_MESSAGE_CHARS = 4000;
const ROLE_INITIATOR = 'initiator';
const ID_DIGITS = 15;
const NOT_FOUND = 404;
const NO_KEY_RETRY_MS = 5_000;
const HISTORY_LIMIT = 50;
const LOCK_PREFIX = 'medledger-chat-';
// Kept messages not sent yet sort after every sent one (ids are digits), in the order written.
const PENDING_MARK = '~';
const QUEUED_MARK = 'q';
const KEY_ERRORS = new Set(['identity_mismatch', 'bad_signature']);
const PROBLEMS = {
  identity: 'This device could not make or register your chat key.',
  noKey: 'Your contact has not opened the chat on their phone yet, so there is no key to check. '
    + 'Try again once they have.',
  handshake: 'Setting up the encrypted conversation failed.',
  oldSession: 'A message sent before the encryption was renewed cannot be read on this device.',
  noSession: 'A message arrived before the encrypted conversation was set up, and cannot be read.',
  tooLong: `A message can be at most ${MAX_MESSAGE_CHARS} characters long.`,
  notReady: 'The encrypted conversation is not ready yet.',
  unexpected: 'A handshake message arrived out of turn and was ignored.',
  notSent: 'The message could not be sent yet.',
};

const chat = {
  userId: null,
  identityReady: null,
  waiting: false,
  releaseDevice: null,
  conversations: new Map(),
  connectionListeners: new Set(),
  unsubscribe: [],
};

// ---- starting and stopping

// Opens the /chat link and prepares the identity key; safe to call on every screen.
export function startChat() {
  const user = currentUser();
  const token = currentToken();
  if (!user || !token) {
    return;
  }
  if (chat.userId !== user.id) {
    resetState();
    chat.userId = user.id;
    chat.unsubscribe = [
      onChatEvent('handshake', (item) => receive(item, 'handshake')),
      onChatEvent('message', (item) => receive(item, 'message')),
      onChatEvent('connection', notifyConnections),
      onChatEvent('unread', notifyConnections),
      onLinkState(linkChanged),
    ];
    claimDevice(user.id, token);
  } else if (!chat.waiting) {
    openChatLink(token);
  }
}

// One tab at a time runs the chat of a user on this device: two tabs sealing with
// copies of one session would use a counter, hence an AES-GCM nonce, twice. The
// others wait (Web Locks) and take over when that tab closes or logs out.
function claimDevice(userId, token) {
  if (!navigator.locks) {
    begin(userId, token);
    return;
  }
  chat.waiting = true;
  navigator.locks.request(LOCK_PREFIX + String(userId), () => new Promise((release) => {
    if (chat.userId !== userId) {
      release();
      return;
    }
    Object.assign(chat, { waiting: false, releaseDevice: release });
    begin(userId, token);
  })).catch(() => {});
}

function begin(userId, token) {
  chat.identityReady = prepareIdentity(userId);
  chat.identityReady.catch(() => {});
  store.forgetOtherUsers(userId).catch(() => {});
  openChatLink(token);
  chat.conversations.forEach((conv) => {
    if (conv.listeners.size) {
      enqueue(conv, () => openConversation(conv));
    }
  });
}

// Logout: close the link, forget every conversation in memory and this user's
// private chat data on the device (the identity key stays: chat-store.js).
export async function stopChat(userId) {
  resetState();
  closeChatLink();
  if (userId !== null && userId !== undefined) {
    await store.forgetConversations(userId).catch(() => {});
  }
  store.closeDatabases();
}

function resetState() {
  chat.unsubscribe.forEach((stop) => stop());
  chat.releaseDevice?.();
  Object.assign(chat, { userId: null, identityReady: null, waiting: false, releaseDevice: null, unsubscribe: [] });
  chat.conversations.clear();
}

// Messages this device received but the patient has not seen yet, per conversation id.
export async function unseenCounts() {
  startChat();
  return chat.userId === null ? {} : store.unseenCounts(chat.userId);
}

// Requests, answers and unread counts changed: the Matches screen reloads.
export function onConnectionsChanged(listener) {
  chat.connectionListeners.add(listener);
  return () => chat.connectionListeners.delete(listener);
}

function notifyConnections() {
  chat.connectionListeners.forEach((listener) => listener());
}

// ---- the identity key

// Made once per user on this device (non-extractable), registered with the node,
// which puts its public key on the ledger.
async function prepareIdentity(userId) {
  let saved = await store.identityOf(userId);
  if (!saved) {
    saved = await generateIdentity();
    await store.saveIdentity(userId, saved);
  }
  const key = publicKeyB64(saved);
  if (saved.registered !== key) {
    await registerChatKey(key);
    saved = { ...saved, registered: key };
    await store.saveIdentity(userId, saved);
  }
  return saved;
}

async function identity() {
  const userId = chat.userId;
  try {
    return await chat.identityReady;
  } catch (error) {
    if (chat.userId === userId) {
      chat.identityReady = prepareIdentity(userId);
      chat.identityReady.catch(() => {});
    }
    throw new Error(`${PROBLEMS.identity} ${error?.message ?? ''}`.trim());
  }
}

// ---- conversations as the screens see them

// Calls `listener(view)` now and on every change; answers the function that stops it.
export function watchConversation(id, listener) {
  startChat();
  const conv = conversation(String(id));
  conv.listeners.add(listener);
  listener(snapshot(conv));
  markSeen(conv);
  if (!conv.opened) {
    conv.opened = true;
    enqueue(conv, () => openConversation(conv));
  }
  return () => conv.listeners.delete(listener);
}

export function sendText(id, text) {
  const conv = conversation(String(id));
  if (text.length > MAX_MESSAGE_CHARS) {
    return Promise.reject(new Error(PROBLEMS.tooLong));
  }
  return enqueue(conv, () => sealAndSend(conv, text));
}

// Starts again after a failure: a network problem, a peer without a key yet, a lost handshake.
export function retryConversation(id) {
  const conv = conversation(String(id));
  Object.assign(conv, { phase: PHASES.starting, problem: null, handshake: null, peerKey: null });
  changed(conv);
  enqueue(conv, async () => {
    await store.dropHandshake(chat.userId, conv.id).catch(() => {});
    await openConversation(conv);
  });
}

export function dismissKeyWarning(id) {
  const conv = conversation(String(id));
  conv.keyWarning = null;
  changed(conv);
}

function conversation(id) {
  if (!chat.conversations.has(id)) {
    chat.conversations.set(id, {
      id,
      peer: null,
      role: null,
      peerKey: null,
      session: null,
      handshake: null,
      phase: PHASES.starting,
      problem: null,
      keyWarning: null,
      errors: [],
      messages: new Map(),
      acked: 0,
      opened: false,
      loaded: false,
      queue: Promise.resolve(),
      listeners: new Set(),
    });
  }
  return chat.conversations.get(id);
}

function snapshot(conv) {
  return {
    id: conv.id,
    peer: conv.peer,
    phase: conv.phase,
    problem: conv.problem,
    keyWarning: conv.keyWarning,
    fingerprint: conv.peerKey?.fingerprint ?? null,
    errors: [...conv.errors],
    messages: [...conv.messages.values()].sort((a, b) => a.key.localeCompare(b.key)),
    link: linkState(),
  };
}

function changed(conv) {
  const view = snapshot(conv);
  conv.listeners.forEach((listener) => listener(view));
}

function linkChanged({ state }) {
  chat.conversations.forEach((conv) => {
    changed(conv);
    if (state === LINK_STATES.online) {
      flushLater(conv);
    }
  });
}

// One task at a time per conversation, in arrival order; a failed task does not stop the next.
function enqueue(conv, task) {
  const run = conv.queue.then(task);
  conv.queue = run.catch(() => {});
  return run;
}

// ---- opening a conversation

async function openConversation(conv) {
  if (chat.waiting) {
    conv.phase = PHASES.elsewhere;
    changed(conv);
    return;
  }
  try {
    await loadLocal(conv);
    await join(conv);
    conv.phase = PHASES.verifying;
    changed(conv);
    await verifyPeerKey(conv);
    if (conv.session) {
      conv.phase = PHASES.ready;
      flushLater(conv);
    } else if (conv.handshake) {
      conv.phase = PHASES.handshaking;
    } else if (conv.role === ROLE_INITIATOR || await lostSession(conv)) {
      await startHandshake(conv);
    } else {
      conv.phase = PHASES.handshaking;
    }
    changed(conv);
  } catch (error) {
    fail(conv, error);
  }
}

async function join(conv) {
  const joined = await request('join', { conversation: conv.id });
  Object.assign(conv, { peer: joined.peer, role: joined.role });
}

// The session, a handshake under way and the transcript this device kept
// (they survive a reload, not a logout).
async function loadLocal(conv) {
  if (conv.loaded) {
    return;
  }
  const userId = chat.userId;
  const [rows, session, handshake] = await Promise.all([
    store.messagesOf(userId, conv.id),
    store.sessionOf(userId, conv.id),
    store.handshakeOf(userId, conv.id),
  ]);
  rows.forEach((row) => conv.messages.set(row.key, row));
  // Only what the peer sent counts: they were acknowledged before being kept.
  conv.acked = Math.max(conv.acked, ...rows.filter((row) => !row.mine).map((row) => row.id));
  conv.session = conv.session ?? session;
  conv.handshake = conv.handshake ?? handshake;
  conv.loaded = true;
  changed(conv);
}

// The peer's identity key as registered on the ledger. A key other than the one
// this device verified for them before raises the changed-key warning.
async function verifyPeerKey(conv) {
  let answer;
  try {
    answer = await getChatKey(conv.peer);
  } catch (error) {
    throw error?.status === NOT_FOUND ? Object.assign(new Error(PROBLEMS.noKey), { retry: true }) : error;
  }
  const pinned = await store.pinnedPeerKey(chat.userId, conv.id);
  if (keyChange(pinned?.key, answer.key) === 'changed') {
    conv.keyWarning = { previous: pinned.fingerprint, current: answer.fingerprint };
  }
  conv.peerKey = answer;
  await store.pinPeerKey(chat.userId, conv.id, { key: answer.key, fingerprint: answer.fingerprint });
}

// The patient who accepted starts a handshake only to replace a session this
// device no longer has: one was confirmed, or used, in this conversation before.
async function lostSession(conv) {
  const { messages } = await request('history', { conversation: conv.id, before: null, limit: HISTORY_LIMIT });
  return messages.some((item) => item.kind === 'message' || item.body?.type === 'confirm');
}

async function startHandshake(conv) {
  const { state, message } = await startInitiator({
    identity: await identity(), peerKey: conv.peerKey.key, conversation: conv.id,
  });
  await keepHandshake(conv, state);
  await request('handshake', { conversation: conv.id, message });
}

async function keepHandshake(conv, state) {
  conv.handshake = state;
  conv.phase = conv.session ? conv.phase : PHASES.handshaking;
  await store.saveHandshake(chat.userId, conv.id, state);
  changed(conv);
}

function fail(conv, error) {
  conv.phase = PHASES.failed;
  conv.problem = describe(error, PROBLEMS.handshake);
  changed(conv);
  if (error?.retry && conv.listeners.size) {
    setTimeout(() => retryIfStillFailed(conv), NO_KEY_RETRY_MS);
  }
}

// The peer has no key yet: look again while the conversation is on screen.
function retryIfStillFailed(conv) {
  if (chat.conversations.get(conv.id) === conv && conv.phase === PHASES.failed && conv.listeners.size) {
    retryConversation(conv.id);
  }
}

// Says what went wrong the way the patient needs to hear it.
function describe(error, fallback) {
  if (error instanceof ChatError) {
    return ERROR_TEXT[error.code] ?? error.message;
  }
  return error?.message || fallback;
}

// ---- receiving

function receive(item, kind) {
  if (item?.conversation === undefined || item.conversation === null) {
    return;
  }
  const conv = conversation(String(item.conversation));
  enqueue(conv, () => handleIncoming(conv, item, kind));
}

async function handleIncoming(conv, item, kind) {
  const id = Number(item.id);
  try {
    await loadLocal(conv);
    if (id <= conv.acked) {
      return;
    }
    if (kind === 'handshake') {
      await handleHandshake(conv, item.message);
    } else {
      await handleMessage(conv, item);
    }
  } catch (error) {
    reportError(conv, id, error, kind);
  }
  await acknowledge(conv, id);
}

async function acknowledge(conv, id) {
  conv.acked = Math.max(conv.acked, id);
  try {
    await request('ack', { conversation: conv.id, up_to: id });
  } catch {
    // The node sends it again later; it is skipped then.
  }
}

async function handleHandshake(conv, message) {
  await ensurePeer(conv);
  if (message?.type === 'hello') {
    await answerHello(conv, message);
  } else if (message?.type === 'reply' && conv.handshake?.role === 'initiator') {
    const { session, message: confirm } = await onReply(conv.handshake, message);
    // Kept first: the reply is acknowledged, so it never comes back to finish this later.
    await useSession(conv, session);
    await request('handshake', { conversation: conv.id, message: confirm });
  } else if (message?.type === 'confirm' && conv.handshake?.role === 'responder') {
    await useSession(conv, await onConfirm(conv.handshake, message));
  } else {
    throw new ChatError('unexpected_message', PROBLEMS.unexpected);
  }
}

async function answerHello(conv, hello) {
  // Both sides started at once: the hello of the patient who asked to connect wins.
  if (conv.handshake?.role === 'initiator' && conv.handshake.step !== 'done' && conv.role === ROLE_INITIATOR) {
    return;
  }
  const own = await identity();
  const respond = () => startResponder({ identity: own, peerKey: conv.peerKey.key, conversation: conv.id }, hello);
  let answer;
  try {
    answer = await respond();
  } catch (error) {
    // Their key may have changed on the ledger since it was fetched: check again, once.
    if (!(error instanceof ChatError) || !KEY_ERRORS.has(error.code)) {
      throw error;
    }
    await verifyPeerKey(conv);
    answer = await respond();
  }
  await keepHandshake(conv, answer.state);
  await request('handshake', { conversation: conv.id, message: answer.message });
}

// A conversation this page has not opened yet (its first hello came in the background).
async function ensurePeer(conv) {
  if (!conv.peer) {
    await join(conv);
  }
  if (!conv.peerKey) {
    await verifyPeerKey(conv);
  }
}

async function useSession(conv, session) {
  Object.assign(conv, { session, handshake: null, phase: PHASES.ready, problem: null });
  await store.saveSession(chat.userId, conv.id, session);
  await store.dropHandshake(chat.userId, conv.id);
  changed(conv);
  flushLater(conv);
}

async function handleMessage(conv, item) {
  if (!conv.session) {
    throw new Error(conv.messages.size ? PROBLEMS.oldSession : PROBLEMS.noSession);
  }
  const text = await openText(conv.session, item.envelope);
  await store.saveSession(chat.userId, conv.id, conv.session);
  await keep(conv, { id: Number(item.id), mine: false, text, sentAt: item.sent_at ?? null });
  notifyConnections();
}

// The conversation is on screen: what it received counts as seen.
function markSeen(conv) {
  conv.messages.forEach((row) => {
    row.seen = true;
  });
  store.markSeen(chat.userId, conv.id).catch(() => {});
}

// A handshake that fails (a bad signature, a key not matching the ledger, a failed
// confirmation) stops the conversation; anything else is listed for the patient.
function reportError(conv, id, error, kind) {
  const outOfTurn = error instanceof ChatError && error.code === 'unexpected_message';
  if (kind === 'handshake' && !conv.session && !outOfTurn) {
    fail(conv, error);
    return;
  }
  conv.errors = [...conv.errors, { id, kind, text: describe(error, PROBLEMS.handshake) }];
  changed(conv);
}

// ---- sending

// Answers {sent: true}, or {sent: false, problem} when the message is kept to be sent
// once the link is back (the outbox); throws when nothing could be kept.
async function sealAndSend(conv, text) {
  if (!conv.session) {
    throw new Error(PROBLEMS.notReady);
  }
  try {
    await flushOutbox(conv);
  } catch (error) {
    return queue(conv, text, error);
  }
  const envelope = await sealMessage(conv.session, text);
  const row = {
    key: `${conv.id}:${PENDING_MARK}${String(envelope.seq).padStart(ID_DIGITS, '0')}`, conversation: conv.id,
    id: null, mine: true, text, sent_at: null, seen: true, pending: true, envelope, th: conv.session.th,
  };
  // Both kept before sending: a counter, hence a nonce, is never used twice, and a
  // message that could not be sent goes out later, before any newer one.
  await store.saveSession(chat.userId, conv.id, conv.session);
  await store.saveMessage(chat.userId, row);
  conv.messages.set(row.key, row);
  changed(conv);
  try {
    await deliver(conv, row);
  } catch (error) {
    return { sent: false, problem: describe(error, PROBLEMS.notSent) };
  }
  return { sent: true };
}

// The outbox could not be emptied: the new message waits behind it, sealed later in order.
async function queue(conv, text, error) {
  const row = {
    key: `${conv.id}:${PENDING_MARK}${QUEUED_MARK}${String(Date.now()).padStart(ID_DIGITS, '0')}`,
    conversation: conv.id, id: null, mine: true, text, sent_at: null, seen: true, pending: true, envelope: null,
    th: null,
  };
  await store.saveMessage(chat.userId, row);
  conv.messages.set(row.key, row);
  changed(conv);
  return { sent: false, problem: describe(error, PROBLEMS.notSent) };
}

function pendingRows(conv) {
  return [...conv.messages.values()].filter((row) => row.pending).sort((a, b) => a.key.localeCompare(b.key));
}

async function flushOutbox(conv) {
  for (const row of pendingRows(conv)) {
    await deliver(conv, row);
  }
}

// Sends one kept message; one sealed under a session since replaced (or not sealed
// yet) is sealed again under the current one first.
async function deliver(conv, row) {
  let current = row;
  if (!row.envelope || row.th !== conv.session.th) {
    current = { ...row, envelope: await sealMessage(conv.session, row.text), th: conv.session.th };
    await store.saveSession(chat.userId, conv.id, conv.session);
    await store.saveMessage(chat.userId, current);
    conv.messages.set(row.key, current);
  }
  const answer = await request('send', { conversation: conv.id, envelope: current.envelope }, { buffer: false });
  conv.messages.delete(row.key);
  await store.deleteMessage(chat.userId, row.key);
  await keep(conv, { id: Number(answer.id), mine: true, text: row.text, sentAt: answer.sent_at ?? null });
}

// Back online, or the conversation is ready again: what waits in the outbox goes out.
function flushLater(conv) {
  if (conv.session && pendingRows(conv).length) {
    enqueue(conv, () => flushOutbox(conv).catch(() => {}));
  }
}

async function keep(conv, { id, mine, text, sentAt }) {
  const row = {
    key: `${conv.id}:${String(id).padStart(ID_DIGITS, '0')}`, conversation: conv.id, id, mine, text, sent_at: sentAt,
    seen: mine || conv.listeners.size > 0,
  };
  conv.messages.set(row.key, row);
  changed(conv);
  await store.saveMessage(chat.userId, row);
}
