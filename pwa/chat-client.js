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
// to connect wins. Every handshake runs against the peer's key as found on the
// public ledger (checked here, not taken from the node's word).
//
// Receiving: what arrives is buffered per conversation by server id and handled
// strictly in id order, one item at a time. The node is told (ack) only up to the
// highest id handled without a hole. A message ahead of its counter (out_of_order)
// is never acknowledged: the missing items are fetched ("history" after the
// cursor); when they cannot be found, the session is given up, a fresh handshake
// starts and the patient is told that some messages could not be read. An item
// that can never be read (tampered, replayed) is reported once and skipped.
// Envelopes name their session: a new session keeps the receiving half of the one it
// replaced (chat-crypto.js replaceSession), so what the peer sealed before a reset is
// read, in order, once. One sealed for a session this device never held is reported.
//
// Sending: a message is sealed and put in the outbox together with the advanced
// session (one IndexedDB transaction) before the first attempt, and every attempt
// carries the outbox item's "cid", which the node dedupes on: a send whose answer
// was lost is simply sent again. An item sealed under a replaced session is first
// looked up on the node by its cid ("stored"): if the node has it, the peer reads it
// with the old session; if not, it is sealed again under the new one with the same
// cid. Either way it reaches the peer once.

import { getBlock, getChatKey, registerChatKey } from './api.js';
import {
  ChatError, ERROR_TEXT, b64d, b64e, deviceChanges, fingerprint, generateIdentity, keyChange, onConfirm, onReply,
  openText,
  publicKeyB64, replaceSession, sealMessage, sessionIdOf, startInitiator, startResponder,
} from './chat-crypto.js';
import * as store from './chat-store.js';
import { currentToken, currentUser } from './session.js';
import {
  LINK_STATES, closeChatLink, linkState, onChatEvent, onLinkState, openChatLink, request,
} from './socket.js';

export const PHASES = {
  starting: 'starting',
  verifying: 'verifying',
  ledger: 'ledger',
  handshaking: 'handshaking',
  ready: 'ready',
  failed: 'failed',
  elsewhere: 'elsewhere',
  unsupported: 'unsupported',
};
export const MAX_MESSAGE_CHARS = 4000;
const ROLE_INITIATOR = 'initiator';
const ID_DIGITS = 15;
const NOT_FOUND = 404;
const NO_KEY_RETRY_MS = 5_000;
const OUTBOX_RETRY_MS = 5_000;
const LEDGER_POLL_MS = 2_000;
const HISTORY_LIMIT = 50;
const MAX_GAP_PAGES = 20;
const CID_BYTES = 16;
const CHAT_KEY_KIND = 'chat_key';
const LOCK_PREFIX = 'medledger-chat-';
// Messages not sent yet sort after every sent one (ids are digits), in the order written.
const PENDING_MARK = '~';
const KEY_ERRORS = new Set(['identity_mismatch', 'bad_signature']);
const HANDLED = 'handled';
const STUCK = 'stuck';
const LATER = 'later';
const DRAIN_RETRY_MS = 5_000;
const BACKLOG_ROUNDS = 50; // sync rounds after one connect; each round is bounded by the node
const BACKLOG_PAUSE_MS = 1_000;
// Refusals worth sending again as they are; any other one would be refused again.
const PASSING_SEND_ERRORS = new Set(['timeout', 'offline', 'rate_limited', 'internal', 'not_connected']);
const PROBLEMS = {
  identity: 'This device could not make or register your chat key.',
  noKey: 'Your contact has not opened the chat on their phone yet, so there is no key to check. '
    + 'Try again once they have.',
  ledger: 'Your contact\'s chat key does not match the public ledger, so this app will not use it. '
    + 'The conversation was stopped: do not trust this key.',
  handshake: 'Setting up the encrypted conversation failed.',
  lost: 'Some messages could not be read: they are missing or were sealed under an encryption session '
    + 'that no longer works. A new encrypted session is being set up.',
  lostEarlier: 'A message sent before the encrypted session was renewed is missing, so it cannot be read.',
  tooLong: `A message can be at most ${MAX_MESSAGE_CHARS} characters long.`,
  notReady: 'The encrypted conversation is not ready yet.',
  confirmKey: 'Their chat key has changed: confirm the new key before you send anything.',
  unexpected: 'A handshake message arrived out of turn and was ignored.',
  notSent: 'The message could not be sent yet.',
  unsupported: 'This browser cannot run the chat safely: it lacks Web Locks (navigator.locks), which keep '
    + 'two tabs from encrypting with the same counter. Please use an up-to-date browser.',
  stopped: 'The chat was closed.',
};

const chat = {
  userId: null,
  device: null,
  linkReady: Promise.resolve(),
  identityReady: null,
  waiting: false,
  unsupported: false,
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
      onChatEvent('backlog', fetchMoreBacklog),
      onLinkState(linkChanged),
    ];
    claimDevice(user.id, token);
  } else if (!chat.waiting && !chat.unsupported && chat.device) {
    openChatLink(token, chat.device);
  }
}

// The node sends a bounded backlog per round and says when more waits: ask again
// (after a pause that lets the acks of this round land) until nothing is left.
async function fetchMoreBacklog({ more } = {}) {
  for (let round = 0; more && round < BACKLOG_ROUNDS; round += 1) {
    await new Promise((resolve) => setTimeout(resolve, BACKLOG_PAUSE_MS));
    try {
      ({ more } = await request('sync', {}));
    } catch {
      return; // the link dropped: reconnecting sends the backlog again
    }
  }
}

// One tab at a time runs the chat of a user on this device: two tabs sealing with
// copies of one session would use a counter, hence an AES-GCM nonce, twice. The
// others wait (Web Locks) and take over when that tab closes or logs out. Without
// Web Locks nothing can guarantee that, so the chat does not run at all.
function claimDevice(userId, token) {
  if (!navigator.locks?.request) {
    chat.unsupported = true;
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
  store.rememberUser(userId);
  chat.identityReady = prepareIdentity(userId);
  chat.identityReady.catch(() => {});
  // The link names this device, read from IndexedDB first; conversations wait for it.
  chat.linkReady = store.deviceOf(userId).then((device) => {
    if (chat.userId === userId) {
      chat.device = device;
      openChatLink(token, device);
    }
  }, () => openChatLink(token));
  chat.conversations.forEach((conv) => {
    if (conv.listeners.size) {
      enqueue(conv, () => openConversation(conv));
    }
    drainLater(conv);
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
  Object.assign(chat, {
    userId: null, device: null, linkReady: Promise.resolve(), identityReady: null, waiting: false,
    unsupported: false, releaseDevice: null, unsubscribe: [],
  });
  chat.conversations.clear();
}

// Messages this device received but the patient has not seen yet, per conversation id.
export async function unseenCounts() {
  startChat();
  return chat.userId === null || chat.unsupported ? {} : store.unseenCounts(chat.userId);
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
  const device = await store.deviceOf(userId);
  // Registered with this device's id (a key from before device ids is registered again with it).
  if (saved.registered !== key || saved.device !== device) {
    await registerChatKey(key, device);
    saved = { ...saved, registered: key, device };
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

// The patient confirmed the peer's new key ("I trust the new key"): it becomes the
// pinned one, and sending is allowed again.
export function trustNewKey(id) {
  const conv = conversation(String(id));
  return enqueue(conv, async () => {
    const change = conv.pin?.change;
    if (!change) {
      return;
    }
    const pin = { key: change.key, fingerprint: change.fingerprint, change: null };
    await store.savePin(chat.userId, conv.id, pin);
    Object.assign(conv, { pin, keyWarning: null });
    changed(conv);
    flushLater(conv);
  });
}

function conversation(id) {
  if (!chat.conversations.has(id)) {
    chat.conversations.set(id, {
      id,
      peer: null,
      role: null,
      peerKey: null,
      pin: null,
      session: null,
      retired: null,
      joinedAt: null,
      newDevices: [],
      handshake: null,
      phase: PHASES.starting,
      problem: null,
      keyWarning: null,
      errors: [],
      messages: new Map(),
      outbox: [],
      retryTimer: null,
      inbox: new Map(),
      draining: false,
      drainTimer: null,
      unsentConfirm: null,
      acked: 0,
      ackSent: 0,
      recovering: false,
      opened: false,
      loaded: false,
      queue: Promise.resolve(),
      listeners: new Set(),
    });
  }
  return chat.conversations.get(id);
}

function snapshot(conv) {
  const phase = chat.unsupported ? PHASES.unsupported : conv.phase;
  return {
    id: conv.id,
    peer: conv.peer,
    phase,
    problem: phase === PHASES.unsupported ? PROBLEMS.unsupported : conv.problem,
    keyWarning: conv.keyWarning,
    // This device came to a conversation that had messages: it shows them from this time on.
    joinedAt: conv.joinedAt,
    // Fingerprints of devices the peer started using since the patient last looked.
    newDevices: [...conv.newDevices],
    // Set only once the key was found in its ledger transaction (checkOnLedger).
    fingerprint: conv.peerKey?.fingerprint ?? null,
    canSend: phase === PHASES.ready && !conv.keyWarning,
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
      resendConfirmLater(conv);
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

function isCurrent(conv) {
  return chat.conversations.get(conv.id) === conv;
}

// ---- opening a conversation

async function openConversation(conv) {
  if (chat.unsupported) {
    changed(conv);
    return;
  }
  if (chat.waiting) {
    conv.phase = PHASES.elsewhere;
    changed(conv);
    return;
  }
  try {
    await chat.linkReady;
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
    } else if (await joinedLate(conv) || conv.role === ROLE_INITIATOR) {
      await startHandshake(conv);
    } else {
      conv.phase = PHASES.handshaking;
    }
    changed(conv);
  } catch (error) {
    fail(conv, error);
  }
  drainLater(conv);
}

async function join(conv) {
  const joined = await request('join', { conversation: conv.id });
  Object.assign(conv, { peer: joined.peer, role: joined.role });
}

// The session, a handshake under way, the cursor, the pinned key (and a key change
// not confirmed yet), the outbox and the transcript this device kept (they survive
// a reload, not a logout).
async function loadLocal(conv) {
  if (conv.loaded) {
    return;
  }
  const userId = chat.userId;
  const [rows, outbox, session, retired, joinedAt, handshake, acked, pin] = await Promise.all([
    store.messagesOf(userId, conv.id),
    store.outboxOf(userId, conv.id),
    store.sessionOf(userId, conv.id),
    store.retiredOf(userId, conv.id),
    store.joinedOf(userId, conv.id),
    store.handshakeOf(userId, conv.id),
    store.cursorOf(userId, conv.id),
    store.pinOf(userId, conv.id),
  ]);
  rows.forEach((row) => conv.messages.set(row.key, row));
  conv.outbox = outbox;
  outbox.forEach((item) => showPending(conv, item));
  conv.acked = Math.max(conv.acked, acked);
  conv.ackSent = Math.max(conv.ackSent, acked);
  conv.session = conv.session ?? session;
  conv.retired = conv.session ? null : conv.retired ?? retired;
  conv.joinedAt = conv.joinedAt ?? joinedAt ?? null;
  conv.handshake = conv.handshake ?? handshake;
  setPin(conv, pin);
  conv.loaded = true;
  changed(conv);
}

// ---- the peer's key: the ledger, and the changed-key rule

// The peer's identity key as registered on the ledger, checked in its ledger
// transaction. A key other than the one pinned for them (the last one a handshake
// succeeded with, or one the patient confirmed) raises the changed-key warning,
// which stays until the patient confirms the new key.
async function verifyPeerKey(conv) {
  const answer = await ledgerKey(conv);
  const pin = await store.pinOf(chat.userId, conv.id);
  const change = keyChange(pin?.key ?? null, answer.key);
  let updated = pin;
  if (change === 'changed' && pin.change?.key !== answer.key) {
    updated = {
      ...pin,
      change: { key: answer.key, fingerprint: answer.fingerprint, since: answer.registered_at ?? null },
    };
  } else if (change === 'same' && pin.change) {
    updated = { ...pin, change: null };
  }
  if (updated !== pin) {
    await store.savePin(chat.userId, conv.id, updated);
  }
  setPin(conv, updated);
  conv.peerKey = answer;
  await noticeNewDevices(conv, answer);
  changed(conv);
}

// The new-device notice: a device of the peer's that was not there when this device
// last looked, found in its ledger transaction, is listed until the patient says OK.
// The first look only takes note.
async function noticeNewDevices(conv, answer) {
  const entries = (answer.devices ?? []).filter((entry) => entry?.height !== null && entry?.height !== undefined);
  const current = Object.fromEntries(entries.map((entry) => [entry.device ?? '', entry.fingerprint]));
  const saved = await store.devicesOf(chat.userId, conv.id);
  let added = saved?.added ?? [];
  if (saved?.known) {
    let changes;
    try {
      changes = deviceChanges(saved.known, current);
    } catch {
      return; // a malformed answer: told nothing, noted nothing
    }
    for (const id of changes.added) {
      const entry = entries.find((item) => (item.device ?? '') === id);
      await checkOnLedger(entry, conv.peer);
      added = [...added, entry.fingerprint];
    }
  }
  await store.saveDevices(chat.userId, conv.id, { known: current, added });
  conv.newDevices = added;
}

// The patient read the new-device notice.
export function acknowledgeNewDevices(id) {
  const conv = conversation(String(id));
  return enqueue(conv, async () => {
    const saved = await store.devicesOf(chat.userId, conv.id);
    await store.saveDevices(chat.userId, conv.id, { known: saved?.known ?? {}, added: [] });
    conv.newDevices = [];
    changed(conv);
  });
}

function setPin(conv, pin) {
  conv.pin = pin ?? null;
  const change = pin?.change;
  conv.keyWarning = change ? { previous: pin.fingerprint, current: change.fingerprint, since: change.since } : null;
}

// Fetches the key; one registered too recently to be in a block yet is fetched
// again every LEDGER_POLL_MS until it is, and trusted only then.
async function ledgerKey(conv) {
  for (;;) {
    let answer;
    try {
      answer = await getChatKey(conv.peer);
    } catch (error) {
      throw error?.status === NOT_FOUND ? Object.assign(new Error(PROBLEMS.noKey), { retry: true }) : error;
    }
    if (answer.height !== null && answer.height !== undefined) {
      await checkOnLedger(answer, conv.peer);
      return answer;
    }
    conv.phase = PHASES.ledger;
    changed(conv);
    await new Promise((resolve) => {
      setTimeout(resolve, LEDGER_POLL_MS);
    });
    if (!isCurrent(conv)) {
      throw new Error(PROBLEMS.stopped);
    }
  }
}

// The node's answer must be what the public ledger holds: the transaction it names,
// in the block it names, is a chat_key transaction for this key whose subject is
// SHA-256(salt || pseudonym) for the pseudonym this conversation is with.
async function checkOnLedger(answer, pseudonym) {
  const block = await getBlock(answer.height);
  const tx = (block?.transactions ?? []).find((item) => item?.hash === answer.tx);
  const payload = tx?.payload;
  const matches = tx?.kind === CHAT_KEY_KIND
    && (payload?.device ?? '') === (answer.device ?? '')
    && typeof payload?.key === 'string' && payload.key === answer.key
    && typeof payload.salt === 'string' && typeof payload.subject === 'string'
    && payload.subject === await subjectOf(payload.salt, pseudonym)
    && answer.fingerprint === await fingerprint(answer.key);
  if (!matches) {
    throw Object.assign(new Error(PROBLEMS.ledger), { final: true });
  }
}

async function subjectOf(salt, pseudonym) {
  let saltBytes;
  try {
    saltBytes = b64d(salt, 'salt');
  } catch {
    return null;
  }
  const name = new TextEncoder().encode(String(pseudonym ?? ''));
  const data = new Uint8Array(saltBytes.length + name.length);
  data.set(saltBytes, 0);
  data.set(name, saltBytes.length);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
  return [...digest].map((byte) => byte.toString(16).padStart(2, '0')).join('');
}

// ---- handshakes

// The patient who accepted starts a handshake only to replace a session this
// device does not have: one was confirmed, or used, in this conversation before
// (this device lost it, or never had it: a new device). A device with nothing of
// the conversation yet notes when it joined: it shows the conversation from then on.
async function joinedLate(conv) {
  const { messages } = await request('history', { conversation: conv.id, before: null, limit: HISTORY_LIMIT });
  const earlier = messages.some((item) => item.kind === 'message' || item.body?.type === 'confirm');
  if (earlier && !conv.messages.size && !conv.joinedAt) {
    conv.joinedAt = new Date().toISOString();
    await store.saveJoined(chat.userId, conv.id, conv.joinedAt);
  }
  return earlier;
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
  if (isCurrent(conv) && conv.phase === PHASES.failed && conv.listeners.size) {
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

// ---- receiving, strictly in id order

function receive(item, kind) {
  if (item?.conversation === undefined || item.conversation === null) {
    return;
  }
  const id = Number(item.id);
  const conv = conversation(String(item.conversation));
  if (!Number.isSafeInteger(id) || id <= 0 || id <= conv.acked || conv.inbox.has(id)) {
    return;
  }
  conv.inbox.set(id, { id, kind, item });
  drainLater(conv);
}

// Items that arrive while a drain runs are taken by it or by the next one; a drain
// that stopped for a passing failure waits for its timer (drainSoon).
function drainLater(conv) {
  if (!conv.inbox.size || conv.draining || conv.drainTimer || chat.waiting || chat.unsupported) {
    return;
  }
  conv.draining = true;
  enqueue(conv, () => drain(conv)).catch(() => drainSoon(conv)).finally(() => {
    conv.draining = false;
    drainLater(conv);
  });
}

// Handles buffered items lowest id first; stops at one that is ahead of its
// counter and cannot be completed, and acknowledges what was handled.
async function drain(conv) {
  try {
    await loadLocal(conv);
    while (conv.inbox.size) {
      const id = Math.min(...conv.inbox.keys());
      const entry = conv.inbox.get(id);
      if (id <= conv.acked) {
        conv.inbox.delete(id);
        continue;
      }
      const outcome = await handleItem(conv, entry);
      if (outcome === LATER) {
        drainSoon(conv);
        break;
      }
      if (outcome === STUCK && !await fillGap(conv, id)) {
        await giveUpSession(conv, id, entry);
      } else if (outcome === HANDLED && conv.inbox.has(id)) {
        await handled(conv, id);
      }
    }
  } finally {
    await acknowledge(conv);
  }
}

// The item could not be handled for a passing reason (no network, the node busy):
// it stays first in line, not acknowledged, and is tried again a little later.
function drainSoon(conv) {
  if (conv.drainTimer) {
    return;
  }
  conv.drainTimer = setTimeout(() => {
    conv.drainTimer = null;
    if (isCurrent(conv)) {
      drainLater(conv);
    }
  }, DRAIN_RETRY_MS);
}

// HANDLED (read, or reported and to be skipped), STUCK (an earlier item is missing) or
// LATER (a passing failure: not a protocol error, nor a final verdict on the peer's key).
async function handleItem(conv, { id, kind, item }) {
  try {
    if (kind === 'handshake') {
      await handleHandshake(conv, item.message, id);
    } else {
      await handleMessage(conv, item, id);
    }
    return HANDLED;
  } catch (error) {
    const code = error instanceof ChatError ? error.code : null;
    if (code === null && !error?.final && conv.inbox.has(id)) {
      return LATER;
    }
    if (code === 'out_of_order') {
      return STUCK;
    }
    reportError(conv, id, error, kind);
    await handled(conv, id);
    return HANDLED;
  }
}

// The cursor moves past an item that needed no other change (a message's moves with it).
async function handled(conv, id) {
  conv.inbox.delete(id);
  conv.acked = Math.max(conv.acked, id);
  await store.saveCursor(chat.userId, conv.id, conv.acked);
}

async function acknowledge(conv) {
  if (conv.acked <= conv.ackSent) {
    return;
  }
  const upTo = conv.acked;
  try {
    await request('ack', { conversation: conv.id, up_to: upTo });
    conv.ackSent = Math.max(conv.ackSent, upTo);
  } catch {
    // The node sends those items again later; they are skipped then.
  }
}

// Fetches what the node holds for this conversation after the cursor and before
// the stuck item; answers whether anything of the peer's was missing here.
async function fillGap(conv, stuckId) {
  if (!conv.peer) {
    await join(conv);
  }
  let after = conv.acked;
  let found = false;
  for (let page = 0; page < MAX_GAP_PAGES; page += 1) {
    let answer;
    try {
      answer = await request('history', { conversation: conv.id, after, before: null, limit: HISTORY_LIMIT });
    } catch {
      return found;
    }
    const items = (answer.messages ?? []).filter((item) => Number(item.id) > after).sort((x, y) => x.id - y.id);
    items.filter((item) => item.from === conv.peer && item.id < stuckId && !conv.inbox.has(item.id))
      .forEach((item) => {
        found = true;
        conv.inbox.set(item.id, { id: item.id, kind: item.kind, item: fromHistory(conv, item) });
      });
    if (!answer.more || !items.length || items.at(-1).id >= stuckId) {
      return found;
    }
    after = items.at(-1).id;
  }
  return found;
}

function fromHistory(conv, item) {
  const body = item.kind === 'handshake' ? { message: item.body } : { envelope: item.body };
  return { conversation: conv.id, id: item.id, from: item.from, sent_at: item.sent_at, ...body };
}

// A hole that cannot be filled: the rest of this session cannot be read. The item is
// skipped, the patient told once, and a fresh handshake replaces the session. A hole in
// a session already replaced only costs that item (the patient is told).
async function giveUpSession(conv, id, entry) {
  await handled(conv, id);
  const sid = entry?.item?.envelope?.sid;
  if (conv.session && sid && sid !== await sessionIdOf(conv.session)) {
    conv.errors = [...conv.errors, { id, kind: 'message', code: 'lost', text: PROBLEMS.lostEarlier }];
    changed(conv);
    return;
  }
  await restartSession(conv, id);
}

async function restartSession(conv, id) {
  if (!conv.recovering) {
    conv.errors = [...conv.errors, { id, kind: 'message', text: PROBLEMS.lost }];
  }
  const retired = conv.session ?? conv.retired;
  Object.assign(conv, { session: null, retired, phase: PHASES.handshaking, recovering: true });
  await store.retireSession(chat.userId, conv.id, retired);
  changed(conv);
  // A handshake under way (ours, or an answer to the peer's) already brings a new session.
  if (!conv.handshake || conv.handshake.step === 'done') {
    try {
      await ensurePeer(conv);
      await startHandshake(conv);
    } catch (error) {
      fail(conv, error);
    }
  }
}

async function handleHandshake(conv, message, id) {
  await ensurePeer(conv);
  if (message?.type === 'hello') {
    await answerHello(conv, message);
    await handled(conv, id);
  } else if (message?.type === 'reply' && conv.handshake?.role === 'initiator') {
    const { session, message: confirm } = await onReply(conv.handshake, message);
    // Kept first: the reply is acknowledged, so it never comes back to finish this later.
    await useSession(conv, session, id);
    await sendConfirm(conv, confirm);
  } else if (message?.type === 'confirm' && conv.handshake?.role === 'responder') {
    await useSession(conv, await onConfirm(conv.handshake, message), id);
  } else {
    throw new ChatError('unexpected_message', PROBLEMS.unexpected);
  }
}

// The peer cannot finish without it: one that did not go out is sent again once online.
async function sendConfirm(conv, confirm) {
  conv.unsentConfirm = confirm;
  try {
    await request('handshake', { conversation: conv.id, message: confirm });
    if (conv.unsentConfirm === confirm) {
      conv.unsentConfirm = null;
    }
  } catch {
    resendConfirmLater(conv);
  }
}

function resendConfirmLater(conv) {
  const confirm = conv.unsentConfirm;
  if (confirm && linkState().state === LINK_STATES.online) {
    setTimeout(() => {
      if (isCurrent(conv) && conv.unsentConfirm === confirm) {
        enqueue(conv, () => sendConfirm(conv, confirm));
      }
    }, DRAIN_RETRY_MS);
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

// The new session replaces the old one and keeps its receiving half; messages waiting
// in the outbox go out in order before anything newer (deliver seals them again if needed).
async function useSession(conv, session, id) {
  const previous = conv.session ?? conv.retired;
  if (previous && previous.conversation === session.conversation) {
    await replaceSession(session, previous);
  }
  await store.commitSession(chat.userId, conv.id, { session, acked: Math.max(conv.acked, id) });
  conv.inbox.delete(id);
  conv.acked = Math.max(conv.acked, id);
  Object.assign(conv, { session, retired: null, handshake: null, phase: PHASES.ready, problem: null });
  if (!conv.pin) {
    const pin = { key: conv.peerKey.key, fingerprint: conv.peerKey.fingerprint, change: null };
    await store.savePin(chat.userId, conv.id, pin);
    setPin(conv, pin);
  }
  changed(conv);
  flushLater(conv);
}

async function handleMessage(conv, item, id) {
  const holder = conv.session ?? conv.retired;
  if (!holder) {
    // The peer writes under a session this device does not have (a logout, a reset).
    await handled(conv, id);
    await restartSession(conv, id);
    return;
  }
  const text = await openText(holder, item.envelope);
  const row = messageRow(conv, { id, mine: false, text, sentAt: item.sent_at ?? null });
  await store.commitReceived(chat.userId, conv.id, {
    session: holder, row, acked: Math.max(conv.acked, id), retired: holder !== conv.session,
  });
  conv.inbox.delete(id);
  conv.acked = Math.max(conv.acked, id);
  conv.recovering = conv.recovering && holder !== conv.session;
  conv.messages.set(row.key, row);
  changed(conv);
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
  const code = error instanceof ChatError ? error.code : null;
  if (kind === 'handshake' && !conv.session && code !== 'unexpected_message') {
    fail(conv, error);
    return;
  }
  // Several envelopes of a session this device never held: one notice says it.
  if (code === 'other_session' && conv.errors.at(-1)?.code === code) {
    return;
  }
  conv.errors = [...conv.errors, { id, kind, code, text: describe(error, PROBLEMS.handshake) }];
  changed(conv);
}

// ---- sending

// Answers {sent: true}, or {sent: false, problem} when the message is kept in the
// outbox to be sent once the link is back; throws when nothing could be kept.
async function sealAndSend(conv, text) {
  if (conv.keyWarning) {
    throw new Error(PROBLEMS.confirmKey);
  }
  if (!conv.session) {
    throw new Error(PROBLEMS.notReady);
  }
  const last = conv.outbox.at(-1)?.order ?? 0;
  const item = {
    cid: b64e(crypto.getRandomValues(new Uint8Array(CID_BYTES))), conversation: conv.id,
    order: Math.max(Date.now(), last + 1), text, envelope: null, th: null,
  };
  await seal(conv, item);
  conv.outbox = [...conv.outbox, item];
  showPending(conv, item);
  changed(conv);
  try {
    await flushOutbox(conv);
  } catch (error) {
    retryOutboxSoon(conv, error);
    return { sent: false, problem: describe(error, PROBLEMS.notSent) };
  }
  return { sent: true };
}

// Seals (again) under the current session: the envelope and the advanced session
// are stored in one transaction, or neither is and the counter goes back to what
// is stored, so the peer never sees a counter skipped.
async function seal(conv, item) {
  const envelope = await sealMessage(conv.session, item.text);
  Object.assign(item, { envelope, th: conv.session.th });
  try {
    await store.commitSealed(chat.userId, conv.id, { session: conv.session, item });
  } catch (error) {
    Object.assign(item, { envelope: null, th: null });
    conv.session = await store.sessionOf(chat.userId, conv.id);
    throw error;
  }
}

// Sealed under a session since replaced: the node may hold it already (an answer was
// lost), and then the peer reads it with that session; otherwise it is sealed again
// under the current one, with the same cid, so at most one of the two is ever stored.
// Answers the node's record of it, or null.
async function sealedAnew(conv, item) {
  if (item.envelope?.sid === await sessionIdOf(conv.session)) {
    return null;
  }
  const found = await request('stored', { conversation: conv.id, cid: item.cid }, { buffer: false });
  if (found.stored) {
    return found;
  }
  await seal(conv, item);
  return null;
}

function showPending(conv, item) {
  const key = `${conv.id}:${PENDING_MARK}${String(item.order).padStart(ID_DIGITS, '0')}`;
  conv.messages.set(key, {
    key, conversation: conv.id, id: null, mine: true, text: item.text, sent_at: null, seen: true, pending: true,
    cid: item.cid,
  });
}

// In order; stops at the first one that cannot go (offline, no answer, refused).
async function flushOutbox(conv) {
  while (conv.outbox.length) {
    if (conv.keyWarning) {
      throw new Error(PROBLEMS.confirmKey);
    }
    await deliver(conv, conv.outbox[0]);
  }
}

async function deliver(conv, item) {
  if (!conv.session) {
    throw new Error(PROBLEMS.notReady);
  }
  const answer = await sealedAnew(conv, item)
    ?? await request('send', { conversation: conv.id, envelope: item.envelope, cid: item.cid }, { buffer: false });
  const row = messageRow(conv, { id: Number(answer.id), mine: true, text: item.text, sentAt: answer.sent_at ?? null });
  await store.commitSent(chat.userId, item.cid, row);
  conv.outbox = conv.outbox.filter((other) => other.cid !== item.cid);
  conv.messages.forEach((shown, key) => {
    if (shown.pending && shown.cid === item.cid) {
      conv.messages.delete(key);
    }
  });
  conv.messages.set(row.key, row);
  changed(conv);
}

// Back online, the conversation ready again, or a new key confirmed: the outbox goes out.
function flushLater(conv) {
  if (conv.session && conv.outbox.length && !conv.keyWarning) {
    enqueue(conv, () => flushOutbox(conv).catch((error) => retryOutboxSoon(conv, error)));
  }
}

// Online but not answered (or refused for now): try again a little later, with the same
// cid, so a message the node did store is not stored twice. Offline, reconnecting does it.
function retryOutboxSoon(conv, error) {
  if (conv.retryTimer || linkState().state !== LINK_STATES.online || !PASSING_SEND_ERRORS.has(error?.code)) {
    return;
  }
  conv.retryTimer = setTimeout(() => {
    conv.retryTimer = null;
    if (isCurrent(conv)) {
      flushLater(conv);
    }
  }, OUTBOX_RETRY_MS);
}

function messageRow(conv, { id, mine, text, sentAt }) {
  return {
    key: `${conv.id}:${String(id).padStart(ID_DIGITS, '0')}`, conversation: conv.id, id, mine, text, sent_at: sentAt,
    seen: mine || conv.listeners.size > 0,
  };
}
