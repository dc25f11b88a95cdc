'use strict';

// The chat's engine, shared by the screens (docs/chat-protocol.md, docs/api.md
// "Matching and chat"). It owns this user's chat identity key, the /chat link
// (socket.js), the handshakes and the sessions (chat-crypto.js), and the
// decrypted conversation kept on this device (chat-store.js). Screens watch it
// and never touch keys.
//
// Devices and lanes: each device of a patient has its own identity key on the
// ledger. A conversation runs one "lane" per other device it reaches: one for each
// of the peer's devices and one for each of this patient's own other devices. Each
// lane has its own handshake, session, order and cursor, exactly as one
// conversation had before devices; a message is sealed once per lane, so every
// device of both patients reads it and none can read another's copy. The node
// addresses each item to one device (to_device, to_own) and says where it came
// from (from_device, own).
//
// Handshakes: a device starts one in every lane where it has no session (a new
// device, or one that lost its session: it logged out). When both ends start at
// once, the hello of the lane's lead wins: the device of the patient who asked to
// connect, or between one's own devices the one with the smaller id. Every
// handshake runs against the other device's key as found on the public ledger
// (checked here, not taken from the node's word).
//
// Receiving: what arrives is buffered per lane by server id and handled strictly
// in id order, one item at a time. The node is told (ack) only up to the highest
// id handled without a hole. A message ahead of its counter (out_of_order) is
// never acknowledged: the missing items are fetched ("history" of the lane after
// the cursor); when they cannot be found, the session is given up, a fresh
// handshake starts and the patient is told that some messages could not be read.
// An item that can never be read (tampered, replayed) is reported once and skipped.
// Envelopes name their session: a new session keeps the receiving half of the one
// it replaced (chat-crypto.js replaceSession), so what the other device sealed
// before a reset is read, in order, once. One sealed for a session this device
// never held is reported.
//
// Sending: a message is sealed for every lane with a session, and each copy is put
// in the lane's outbox together with the advanced session (one IndexedDB
// transaction) before the first attempt; every attempt carries the copy's "cid",
// which the node dedupes on: a send whose answer was lost is simply sent again. A
// copy sealed under a replaced session is first looked up on the node by its cid
// ("stored"): if the node has it, the other device reads it with the old session;
// if not, it is sealed again under the new one with the same cid. Either way it
// arrives once. A device removed meanwhile gets nothing more: its lane is closed.

import { getBlock, getChatKey, listChatDevices, registerChatKey } from './api.js';
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
const OPEN = 'open'; // the lanes are set up: the screen's phase follows them
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
const DEVICE_REMOVED = 'device_removed';
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
  unknownDevice: 'A device that is not on the public ledger wrote in this conversation; it was ignored.',
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
  // The link names this device, read from IndexedDB first; conversations wait for it.
  chat.linkReady = store.deviceOf(userId).then((device) => {
    if (chat.userId === userId) {
      chat.device = device;
      openChatLink(token, device);
    }
  }, () => openChatLink(token));
  chat.identityReady = chat.linkReady.then(() => prepareIdentity(userId));
  chat.identityReady.catch(() => {});
  chat.conversations.forEach((room) => {
    if (room.listeners.size) {
      enqueue(room, () => openConversation(room));
    }
    room.lanes.forEach(drainLater);
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

// Made once per user on this device (non-extractable), registered with the node
// under this device's id; the node puts its public key on the ledger.
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
  const room = conversation(String(id));
  room.listeners.add(listener);
  listener(snapshot(room));
  markSeen(room);
  if (!room.opened) {
    room.opened = true;
    enqueue(room, () => openConversation(room));
  }
  return () => room.listeners.delete(listener);
}

export function sendText(id, text) {
  const room = conversation(String(id));
  if (text.length > MAX_MESSAGE_CHARS) {
    return Promise.reject(new Error(PROBLEMS.tooLong));
  }
  return enqueue(room, () => sealAndSend(room, text));
}

// Starts again after a failure: a network problem, a peer without a key yet, a lost handshake.
export function retryConversation(id) {
  const room = conversation(String(id));
  Object.assign(room, { phase: PHASES.starting, problem: null });
  changed(room);
  enqueue(room, async () => {
    for (const lane of room.lanes.values()) {
      if (!lane.session) {
        lane.handshake = null;
        await store.dropHandshake(chat.userId, lane.key).catch(() => {});
      }
    }
    await openConversation(room);
  });
}

// The patient confirmed the new key of the peer's device ("I trust the new key"): it becomes
// the pinned one, and sending is allowed again.
export function trustNewKey(id) {
  const room = conversation(String(id));
  return enqueue(room, async () => {
    for (const lane of room.lanes.values()) {
      const change = lane.pin?.change;
      if (change) {
        const pin = { key: change.key, fingerprint: change.fingerprint, change: null };
        await store.savePin(chat.userId, lane.key, pin);
        setPin(lane, pin);
      }
    }
    changed(room);
    room.lanes.forEach(flushLater);
  });
}

function conversation(id) {
  if (!chat.conversations.has(id)) {
    chat.conversations.set(id, {
      id,
      peer: null,
      self: null,
      role: null,
      lanes: new Map(),
      joinedAt: null,
      newDevices: [],
      phase: PHASES.starting,
      problem: null,
      errors: [],
      messages: new Map(),
      opened: false,
      loaded: false,
      queue: Promise.resolve(),
      listeners: new Set(),
    });
  }
  return chat.conversations.get(id);
}

// One lane: this device and one other device in the conversation (the peer's, or with
// `own` one of this patient's), keyed so its data never mixes with another lane's.
function laneOf(room, own, device) {
  const key = `${room.id}|${own ? 'own' : 'peer'}|${device}`;
  if (!room.lanes.has(key)) {
    room.lanes.set(key, {
      key,
      room,
      own,
      device,
      peerKey: null,
      pin: null,
      keyWarning: null,
      session: null,
      retired: null,
      handshake: null,
      outbox: [],
      retryTimer: null,
      inbox: new Map(),
      draining: false,
      drainTimer: null,
      unsentConfirm: null,
      acked: 0,
      ackSent: 0,
      recovering: false,
      loaded: false,
      closed: false,
      queue: Promise.resolve(),
    });
  }
  return room.lanes.get(key);
}

function peerLanes(room) {
  return [...room.lanes.values()].filter((lane) => !lane.own && !lane.closed);
}

// Whose hello wins when both ends of a lane start at once.
function leads(lane) {
  return lane.own ? String(chat.device ?? '') < lane.device : lane.room.role === ROLE_INITIATOR;
}

function roomPhase(room) {
  if (room.phase !== OPEN) {
    return room.phase;
  }
  return peerLanes(room).some((lane) => lane.session) ? PHASES.ready : PHASES.handshaking;
}

function snapshot(room) {
  const phase = chat.unsupported ? PHASES.unsupported : roomPhase(room);
  const lanes = peerLanes(room);
  const keyWarning = lanes.find((lane) => lane.keyWarning)?.keyWarning ?? null;
  return {
    id: room.id,
    peer: room.peer,
    phase,
    problem: phase === PHASES.unsupported ? PROBLEMS.unsupported : room.problem,
    keyWarning,
    // This device came to a conversation that had messages: it shows them from this time on.
    joinedAt: room.joinedAt,
    // Fingerprints of devices the peer started using since the patient last looked.
    newDevices: [...room.newDevices],
    // Set only once a key was found in its ledger transaction (checkOnLedger).
    fingerprint: (lanes.find((lane) => lane.session) ?? lanes[0])?.peerKey?.fingerprint ?? null,
    canSend: phase === PHASES.ready && !keyWarning,
    errors: [...room.errors],
    messages: [...room.messages.values()].sort((a, b) => a.key.localeCompare(b.key)),
    link: linkState(),
  };
}

function changed(room) {
  const view = snapshot(room);
  room.listeners.forEach((listener) => listener(view));
}

function linkChanged({ state }) {
  chat.conversations.forEach((room) => {
    changed(room);
    if (state === LINK_STATES.online) {
      room.lanes.forEach((lane) => {
        resendConfirmLater(lane);
        flushLater(lane);
      });
    }
  });
}

// One task at a time per conversation (or lane), in arrival order; a failed task does not
// stop the next.
function enqueue(holder, task) {
  const run = holder.queue.then(task);
  holder.queue = run.catch(() => {});
  return run;
}

function isCurrent(room) {
  return chat.conversations.get(room.id) === room;
}

function isOpen(lane) {
  return isCurrent(lane.room) && lane.room.lanes.get(lane.key) === lane && !lane.closed;
}

// ---- opening a conversation

async function openConversation(room) {
  if (chat.unsupported) {
    changed(room);
    return;
  }
  if (chat.waiting) {
    room.phase = PHASES.elsewhere;
    changed(room);
    return;
  }
  try {
    await chat.linkReady;
    await loadRoom(room);
    await join(room);
    room.phase = PHASES.verifying;
    changed(room);
    await joinedLate(room);
    const lanes = await findLanes(room);
    Object.assign(room, { phase: OPEN, problem: null });
    changed(room);
    await Promise.all(lanes.map((lane) => enqueue(lane, () => openLane(lane).catch((error) => laneFailed(lane, error)))));
  } catch (error) {
    fail(room, error);
  }
  room.lanes.forEach(drainLater);
}

async function join(room) {
  const joined = await request('join', { conversation: room.id });
  Object.assign(room, { peer: joined.peer, self: joined.self ?? null, role: joined.role });
}

// The transcript this device kept and when it joined (they survive a reload, not a logout).
async function loadRoom(room) {
  if (room.loaded) {
    return;
  }
  const [rows, joinedAt] = await Promise.all([
    store.messagesOf(chat.userId, room.id),
    store.joinedOf(chat.userId, room.id),
  ]);
  rows.forEach((row) => room.messages.set(row.key, row));
  room.joinedAt = room.joinedAt ?? joinedAt ?? null;
  room.loaded = true;
  changed(room);
}

// A lane's session, a handshake under way, the cursor, the pinned key (and a key change
// not confirmed yet) and the outbox.
async function loadLane(lane) {
  if (lane.loaded) {
    return;
  }
  const userId = chat.userId;
  const [outbox, session, retired, handshake, acked, pin] = await Promise.all([
    store.outboxOf(userId, lane.key),
    store.sessionOf(userId, lane.key),
    store.retiredOf(userId, lane.key),
    store.handshakeOf(userId, lane.key),
    store.cursorOf(userId, lane.key),
    store.pinOf(userId, lane.key),
  ]);
  lane.outbox = outbox;
  outbox.forEach((item) => showPending(lane.room, item));
  lane.acked = Math.max(lane.acked, acked);
  lane.ackSent = Math.max(lane.ackSent, acked);
  lane.session = lane.session ?? session;
  lane.retired = lane.session ? null : lane.retired ?? retired;
  lane.handshake = lane.handshake ?? handshake;
  if (!lane.peerKey) {
    setPin(lane, pin);
  }
  lane.loaded = true;
  changed(lane.room);
}

// A lane with no session starts a handshake, unless the other device's hello already
// waits to be answered (it came with the backlog when the link opened).
async function openLane(lane) {
  await loadLane(lane);
  const helloWaits = [...lane.inbox.values()].some((entry) => entry.item?.message?.type === 'hello');
  if (lane.session) {
    flushLater(lane);
  } else if (!lane.handshake && !helloWaits) {
    await startHandshake(lane);
  }
  changed(lane.room);
}

function laneFailed(lane, error) {
  if (error?.code === DEVICE_REMOVED) {
    return closeLane(lane);
  }
  if (!lane.own && !peerLanes(lane.room).some((other) => other.session)) {
    fail(lane.room, error);
  }
  return undefined;
}

// A removed device: nothing is sealed for it any more, and what waited for it goes.
async function closeLane(lane) {
  lane.closed = true;
  const waiting = lane.outbox;
  lane.outbox = [];
  for (const item of waiting) {
    await store.commitSent(chat.userId, item.cid, null).catch(() => {});
    dropPendingIfDone(lane.room, item);
  }
  changed(lane.room);
}

async function findLanes(room) {
  const answer = await ledgerKeys(room);
  const lanes = [];
  for (const entry of devicesIn(answer).filter(onLedger)) {
    await checkOnLedger(entry, room.peer);
    const lane = laneOf(room, false, entry.device ?? '');
    await loadLane(lane);
    await verifyLaneKey(lane, entry);
    lanes.push(lane);
  }
  await noticeNewDevices(room, answer);
  for (const entry of await ownDevices(room)) {
    const lane = laneOf(room, true, entry.device);
    await loadLane(lane);
    await verifyLaneKey(lane, entry);
    lanes.push(lane);
  }
  return lanes;
}

function devicesIn(answer) {
  return Array.isArray(answer?.devices) ? answer.devices : [answer];
}

function onLedger(entry) {
  return entry?.height !== null && entry?.height !== undefined;
}

// This patient's other devices whose keys are in a block, each checked on the ledger.
// None when the list cannot be had: the copies for them wait for the next opening.
async function ownDevices(room) {
  let devices;
  try {
    devices = await listChatDevices();
  } catch {
    return [];
  }
  const others = (devices ?? []).filter((entry) => entry?.device && entry.device !== chat.device && onLedger(entry));
  for (const entry of others) {
    await checkOnLedger(entry, room.self);
  }
  return others;
}

// ---- the other devices' keys: the ledger, and the changed-key rule

// The key of the lane's device as registered on the ledger (checked by the caller). A key
// of the peer's other than the one pinned for that device (the last one a handshake
// succeeded with, or one the patient confirmed) raises the changed-key warning, which stays
// until the patient confirms the new key. One's own devices need no confirmation.
async function verifyLaneKey(lane, entry) {
  const pin = await store.pinOf(chat.userId, lane.key);
  const change = keyChange(pin?.key ?? null, entry.key);
  let updated = pin;
  if (change === 'changed' && lane.own) {
    updated = { key: entry.key, fingerprint: entry.fingerprint, change: null };
  } else if (change === 'changed' && pin.change?.key !== entry.key) {
    updated = {
      ...pin,
      change: { key: entry.key, fingerprint: entry.fingerprint, since: entry.registered_at ?? null },
    };
  } else if (change === 'same' && pin.change) {
    updated = { ...pin, change: null };
  }
  if (updated !== pin) {
    await store.savePin(chat.userId, lane.key, updated);
  }
  setPin(lane, updated);
  lane.peerKey = entry;
  changed(lane.room);
}

// A lane opened by an item from a device not seen yet (a new device's hello): its key is
// found on the ledger first; one not in a block yet is looked for again later.
async function findLaneKey(lane) {
  const room = lane.room;
  const answer = lane.own ? null : await getChatKey(room.peer);
  const entries = lane.own ? await listChatDevices() : devicesIn(answer);
  const entry = (entries ?? []).find((item) => (item?.device ?? '') === lane.device);
  if (!entry) {
    throw Object.assign(new Error(PROBLEMS.unknownDevice), { final: true });
  }
  if (!onLedger(entry)) {
    throw new Error(PROBLEMS.notReady); // a passing reason: the item is handled later
  }
  await checkOnLedger(entry, lane.own ? room.self : room.peer);
  await loadLane(lane);
  await verifyLaneKey(lane, entry);
  if (answer) {
    await noticeNewDevices(room, answer);
  }
}

// The new-device notice: a device of the peer's that was not there when this device
// last looked, found in its ledger transaction, is listed until the patient says OK.
// The first look only takes note.
async function noticeNewDevices(room, answer) {
  const entries = devicesIn(answer).filter(onLedger);
  const current = Object.fromEntries(entries.map((entry) => [entry.device ?? '', entry.fingerprint]));
  const saved = await store.devicesOf(chat.userId, room.id);
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
      await checkOnLedger(entry, room.peer);
      added = [...added, entry.fingerprint];
    }
  }
  await store.saveDevices(chat.userId, room.id, { known: current, added });
  room.newDevices = added;
  changed(room);
}

// The patient read the new-device notice.
export function acknowledgeNewDevices(id) {
  const room = conversation(String(id));
  return enqueue(room, async () => {
    const saved = await store.devicesOf(chat.userId, room.id);
    await store.saveDevices(chat.userId, room.id, { known: saved?.known ?? {}, added: [] });
    room.newDevices = [];
    changed(room);
  });
}

function setPin(lane, pin) {
  lane.pin = pin ?? null;
  const change = pin?.change;
  lane.keyWarning = change ? { previous: pin.fingerprint, current: change.fingerprint, since: change.since } : null;
}

// Fetches the peer's keys; while none is in a block yet they are fetched again every
// LEDGER_POLL_MS, and trusted only then.
async function ledgerKeys(room) {
  for (;;) {
    let answer;
    try {
      answer = await getChatKey(room.peer);
    } catch (error) {
      throw error?.status === NOT_FOUND ? Object.assign(new Error(PROBLEMS.noKey), { retry: true }) : error;
    }
    if (devicesIn(answer).some(onLedger)) {
      return answer;
    }
    room.phase = PHASES.ledger;
    changed(room);
    await new Promise((resolve) => {
      setTimeout(resolve, LEDGER_POLL_MS);
    });
    if (!isCurrent(room)) {
      throw new Error(PROBLEMS.stopped);
    }
  }
}

// The node's answer must be what the public ledger holds: the transaction it names,
// in the block it names, is a chat_key transaction for this key and device whose subject
// is SHA-256(salt || pseudonym) for the patient it is said to be of.
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

// A device with nothing of a conversation that had messages notes when it joined: it
// shows the conversation from then on (the earlier messages stay on the devices that
// received them).
async function joinedLate(room) {
  if (room.messages.size || room.joinedAt) {
    return;
  }
  const { messages } = await request('history', { conversation: room.id, before: null, limit: HISTORY_LIMIT });
  if (messages.some((item) => item.kind === 'message' || item.body?.type === 'confirm')) {
    room.joinedAt = new Date().toISOString();
    await store.saveJoined(chat.userId, room.id, room.joinedAt);
  }
}

// Where the node delivers what this lane sends: the other device.
function target(lane) {
  return { conversation: lane.room.id, to_device: lane.device || null, to_own: lane.own };
}

async function startHandshake(lane) {
  const { state, message } = await startInitiator({
    identity: await identity(), peerKey: lane.peerKey.key, conversation: lane.room.id,
  });
  await keepHandshake(lane, state);
  await request('handshake', { ...target(lane), message });
}

async function keepHandshake(lane, state) {
  lane.handshake = state;
  await store.saveHandshake(chat.userId, lane.key, state);
  changed(lane.room);
}

function fail(room, error) {
  room.phase = PHASES.failed;
  room.problem = describe(error, PROBLEMS.handshake);
  changed(room);
  if (error?.retry && room.listeners.size) {
    setTimeout(() => retryIfStillFailed(room), NO_KEY_RETRY_MS);
  }
}

// The peer has no key yet: look again while the conversation is on screen.
function retryIfStillFailed(room) {
  if (isCurrent(room) && room.phase === PHASES.failed && room.listeners.size) {
    retryConversation(room.id);
  }
}

// Says what went wrong the way the patient needs to hear it.
function describe(error, fallback) {
  if (error instanceof ChatError) {
    return ERROR_TEXT[error.code] ?? error.message;
  }
  return error?.message || fallback;
}

// ---- receiving, strictly in id order per lane

function receive(item, kind) {
  if (item?.conversation === undefined || item.conversation === null) {
    return;
  }
  const id = Number(item.id);
  const room = conversation(String(item.conversation));
  const lane = laneOf(room, item.own === true, typeof item.from_device === 'string' ? item.from_device : '');
  if (lane.closed || !Number.isSafeInteger(id) || id <= 0 || id <= lane.acked || lane.inbox.has(id)) {
    return;
  }
  lane.inbox.set(id, { id, kind, item });
  drainLater(lane);
}

// Items that arrive while a drain runs are taken by it or by the next one; a drain
// that stopped for a passing failure waits for its timer (drainSoon).
function drainLater(lane) {
  if (!lane.inbox.size || lane.draining || lane.drainTimer || chat.waiting || chat.unsupported) {
    return;
  }
  lane.draining = true;
  enqueue(lane, () => drain(lane)).catch(() => drainSoon(lane)).finally(() => {
    lane.draining = false;
    drainLater(lane);
  });
}

// Handles buffered items lowest id first; stops at one that is ahead of its
// counter and cannot be completed, and acknowledges what was handled.
async function drain(lane) {
  try {
    await loadRoom(lane.room);
    await loadLane(lane);
    while (lane.inbox.size) {
      const id = Math.min(...lane.inbox.keys());
      const entry = lane.inbox.get(id);
      if (id <= lane.acked) {
        lane.inbox.delete(id);
        continue;
      }
      const outcome = await handleItem(lane, entry);
      if (outcome === LATER) {
        drainSoon(lane);
        break;
      }
      if (outcome === STUCK && !await fillGap(lane, id)) {
        await giveUpSession(lane, id, entry);
      } else if (outcome === HANDLED && lane.inbox.has(id)) {
        await handled(lane, id);
      }
    }
  } finally {
    await acknowledge(lane);
  }
}

// The item could not be handled for a passing reason (no network, the node busy):
// it stays first in line, not acknowledged, and is tried again a little later.
function drainSoon(lane) {
  if (lane.drainTimer) {
    return;
  }
  lane.drainTimer = setTimeout(() => {
    lane.drainTimer = null;
    if (isOpen(lane)) {
      drainLater(lane);
    }
  }, DRAIN_RETRY_MS);
}

// HANDLED (read, or reported and to be skipped), STUCK (an earlier item is missing) or
// LATER (a passing failure: not a protocol error, nor a final verdict on a key).
async function handleItem(lane, { id, kind, item }) {
  try {
    if (kind === 'handshake') {
      await handleHandshake(lane, item.message, id);
    } else {
      await handleMessage(lane, item, id);
    }
    return HANDLED;
  } catch (error) {
    const code = error instanceof ChatError ? error.code : null;
    if (code === null && !error?.final && lane.inbox.has(id)) {
      return LATER;
    }
    if (code === 'out_of_order') {
      return STUCK;
    }
    reportError(lane, id, error, kind);
    await handled(lane, id);
    return HANDLED;
  }
}

// The cursor moves past an item that needed no other change (a message's moves with it).
async function handled(lane, id) {
  lane.inbox.delete(id);
  lane.acked = Math.max(lane.acked, id);
  await store.saveCursor(chat.userId, lane.key, lane.acked);
}

async function acknowledge(lane) {
  if (lane.acked <= lane.ackSent) {
    return;
  }
  const upTo = lane.acked;
  try {
    await request('ack', { conversation: lane.room.id, up_to: upTo, from_device: lane.device, own: lane.own });
    lane.ackSent = Math.max(lane.ackSent, upTo);
  } catch {
    // The node sends those items again later; they are skipped then.
  }
}

// Fetches what the node holds for this lane after the cursor and before the stuck item;
// answers whether anything of the other device's was missing here.
async function fillGap(lane, stuckId) {
  const room = lane.room;
  let after = lane.acked;
  let found = false;
  for (let page = 0; page < MAX_GAP_PAGES; page += 1) {
    let answer;
    try {
      answer = await request('history', {
        conversation: room.id, after, before: null, limit: HISTORY_LIMIT, from_device: lane.device, own: lane.own,
      });
    } catch {
      return found;
    }
    const items = (answer.messages ?? []).filter((item) => Number(item.id) > after).sort((x, y) => x.id - y.id);
    items.filter((item) => item.id < stuckId && !lane.inbox.has(item.id) && (item.from_device ?? '') === lane.device)
      .forEach((item) => {
        found = true;
        lane.inbox.set(item.id, { id: item.id, kind: item.kind, item: fromHistory(room, item) });
      });
    if (!answer.more || !items.length || items.at(-1).id >= stuckId) {
      return found;
    }
    after = items.at(-1).id;
  }
  return found;
}

function fromHistory(room, item) {
  const body = item.kind === 'handshake' ? { message: item.body } : { envelope: item.body };
  return { conversation: room.id, id: item.id, from: item.from, sent_at: item.sent_at, ...body };
}

// A hole that cannot be filled: the rest of this session cannot be read. The item is
// skipped, the patient told once, and a fresh handshake replaces the session. A hole in
// a session already replaced only costs that item (the patient is told).
async function giveUpSession(lane, id, entry) {
  await handled(lane, id);
  const sid = entry?.item?.envelope?.sid;
  if (lane.session && sid && sid !== await sessionIdOf(lane.session)) {
    addError(lane.room, { id, kind: 'message', code: 'lost', text: PROBLEMS.lostEarlier });
    return;
  }
  await restartSession(lane, id);
}

async function restartSession(lane, id) {
  if (!lane.recovering) {
    addError(lane.room, { id, kind: 'message', text: PROBLEMS.lost });
  }
  const retired = lane.session ?? lane.retired;
  Object.assign(lane, { session: null, retired, recovering: true });
  await store.retireSession(chat.userId, lane.key, retired);
  changed(lane.room);
  // A handshake under way (ours, or an answer to theirs) already brings a new session.
  if (!lane.handshake || lane.handshake.step === 'done') {
    try {
      await ensureLaneKey(lane);
      await startHandshake(lane);
    } catch (error) {
      laneFailed(lane, error);
    }
  }
}

function addError(room, error) {
  room.errors = [...room.errors, error];
  changed(room);
}

async function handleHandshake(lane, message, id) {
  await ensureLaneKey(lane);
  if (message?.type === 'hello') {
    await answerHello(lane, message);
    await handled(lane, id);
  } else if (message?.type === 'reply' && lane.handshake?.role === 'initiator') {
    const { session, message: confirm } = await onReply(lane.handshake, message);
    // Kept first: the reply is acknowledged, so it never comes back to finish this later.
    await useSession(lane, session, id);
    await sendConfirm(lane, confirm);
  } else if (message?.type === 'confirm' && lane.handshake?.role === 'responder') {
    await useSession(lane, await onConfirm(lane.handshake, message), id);
  } else {
    throw new ChatError('unexpected_message', PROBLEMS.unexpected);
  }
}

// The other device cannot finish without it: one that did not go out is sent again once online.
async function sendConfirm(lane, confirm) {
  lane.unsentConfirm = confirm;
  try {
    await request('handshake', { ...target(lane), message: confirm });
    if (lane.unsentConfirm === confirm) {
      lane.unsentConfirm = null;
    }
  } catch {
    resendConfirmLater(lane);
  }
}

function resendConfirmLater(lane) {
  const confirm = lane.unsentConfirm;
  if (confirm && linkState().state === LINK_STATES.online) {
    setTimeout(() => {
      if (isOpen(lane) && lane.unsentConfirm === confirm) {
        enqueue(lane, () => sendConfirm(lane, confirm));
      }
    }, DRAIN_RETRY_MS);
  }
}

async function answerHello(lane, hello) {
  // Both ends started at once: the lead's hello wins.
  if (lane.handshake?.role === 'initiator' && lane.handshake.step !== 'done' && leads(lane)) {
    return;
  }
  const own = await identity();
  const respond = () => startResponder(
    { identity: own, peerKey: lane.peerKey.key, conversation: lane.room.id },
    hello,
  );
  let answer;
  try {
    answer = await respond();
  } catch (error) {
    // Their key may have changed on the ledger since it was fetched: check again, once.
    if (!(error instanceof ChatError) || !KEY_ERRORS.has(error.code)) {
      throw error;
    }
    await findLaneKey(lane);
    answer = await respond();
  }
  await keepHandshake(lane, answer.state);
  await request('handshake', { ...target(lane), message: answer.message });
}

// A lane this page has not opened yet (its first item came in the background).
async function ensureLaneKey(lane) {
  if (!lane.room.peer) {
    await join(lane.room);
  }
  if (!lane.peerKey) {
    await findLaneKey(lane);
  }
}

// The new session replaces the old one and keeps its receiving half; messages waiting
// in the outbox go out in order before anything newer (deliver seals them again if needed).
async function useSession(lane, session, id) {
  const previous = lane.session ?? lane.retired;
  if (previous && previous.conversation === session.conversation) {
    await replaceSession(session, previous);
  }
  await store.commitSession(chat.userId, lane.key, { session, acked: Math.max(lane.acked, id) });
  lane.inbox.delete(id);
  lane.acked = Math.max(lane.acked, id);
  Object.assign(lane, { session, retired: null, handshake: null });
  if (lane.room.phase === PHASES.failed && !lane.own) {
    Object.assign(lane.room, { phase: OPEN, problem: null });
  }
  if (!lane.pin) {
    const pin = { key: lane.peerKey.key, fingerprint: lane.peerKey.fingerprint, change: null };
    await store.savePin(chat.userId, lane.key, pin);
    setPin(lane, pin);
  }
  changed(lane.room);
  flushLater(lane);
}

async function handleMessage(lane, item, id) {
  const room = lane.room;
  const holder = lane.session ?? lane.retired;
  if (!holder) {
    // The other device writes under a session this device does not have (a logout, a reset).
    await handled(lane, id);
    await restartSession(lane, id);
    return;
  }
  const text = await openText(holder, item.envelope);
  const row = messageRow(room, { id, mine: lane.own, text, sentAt: item.sent_at ?? null });
  await store.commitReceived(chat.userId, lane.key, {
    session: holder, row, acked: Math.max(lane.acked, id), retired: holder !== lane.session,
  });
  lane.inbox.delete(id);
  lane.acked = Math.max(lane.acked, id);
  lane.recovering = lane.recovering && holder !== lane.session;
  room.messages.set(row.key, row);
  changed(room);
  notifyConnections();
}

// The conversation is on screen: what it received counts as seen.
function markSeen(room) {
  room.messages.forEach((row) => {
    row.seen = true;
  });
  store.markSeen(chat.userId, room.id).catch(() => {});
}

// A handshake with one of the peer's devices that fails (a bad signature, a key not
// matching the ledger, a failed confirmation) stops the conversation; anything else is
// listed for the patient.
function reportError(lane, id, error, kind) {
  const room = lane.room;
  const code = error instanceof ChatError ? error.code : null;
  if (kind === 'handshake' && !lane.session && !lane.own && code !== 'unexpected_message') {
    fail(room, error);
    return;
  }
  // Several envelopes of a session this device never held: one notice says it.
  if (code === 'other_session' && room.errors.at(-1)?.code === code) {
    return;
  }
  addError(room, { id, kind, code, text: describe(error, PROBLEMS.handshake) });
}

// ---- sending

// Seals the message for every device the conversation reaches with a session: the peer's
// and this patient's other ones. Answers {sent: true}, or {sent: false, problem} when a copy
// for the peer is kept in its outbox to be sent once the link is back; throws when nothing
// could be kept.
async function sealAndSend(room, text) {
  const lanes = [...room.lanes.values()].filter((lane) => !lane.closed && lane.session);
  if (peerLanes(room).some((lane) => lane.keyWarning)) {
    throw new Error(PROBLEMS.confirmKey);
  }
  if (!lanes.some((lane) => !lane.own)) {
    throw new Error(PROBLEMS.notReady);
  }
  const base = b64e(crypto.getRandomValues(new Uint8Array(CID_BYTES)));
  const last = Math.max(0, ...lanes.map((lane) => lane.outbox.at(-1)?.order ?? 0));
  const order = Math.max(Date.now(), last + 1);
  const sealed = [];
  for (const lane of lanes) {
    const item = {
      cid: `${base}-${lane.own ? 'o' : 'p'}${lane.device}`, base, conversation: lane.key, room: room.id, order,
      text, envelope: null, th: null,
    };
    await enqueue(lane, async () => {
      if (lane.session && !lane.closed) {
        await seal(lane, item);
        lane.outbox = [...lane.outbox, item];
        sealed.push(lane);
      }
    });
  }
  if (!sealed.some((lane) => !lane.own)) {
    throw new Error(PROBLEMS.notReady);
  }
  showPending(room, { base, order, text, cid: base });
  changed(room);
  const results = await Promise.allSettled(sealed.map((lane) => enqueue(lane, () => flushOutbox(lane))));
  let problem = null;
  results.forEach((result, index) => {
    if (result.status === 'rejected') {
      retryOutboxSoon(sealed[index], result.reason);
      problem = sealed[index].own ? problem : result.reason;
    }
  });
  return problem ? { sent: false, problem: describe(problem, PROBLEMS.notSent) } : { sent: true };
}

// Seals (again) under the lane's session: the envelope and the advanced session are
// stored in one transaction, or neither is and the counter goes back to what is stored,
// so the other device never sees a counter skipped.
async function seal(lane, item) {
  const envelope = await sealMessage(lane.session, item.text);
  Object.assign(item, { envelope, th: lane.session.th });
  try {
    await store.commitSealed(chat.userId, lane.key, { session: lane.session, item });
  } catch (error) {
    Object.assign(item, { envelope: null, th: null });
    lane.session = await store.sessionOf(chat.userId, lane.key);
    throw error;
  }
}

// Sealed under a session since replaced: the node may hold it already (an answer was
// lost), and then the other device reads it with that session; otherwise it is sealed
// again under the current one, with the same cid, so at most one of the two is ever
// stored. Answers the node's record of it, or null.
async function sealedAnew(lane, item) {
  if (item.envelope?.sid === await sessionIdOf(lane.session)) {
    return null;
  }
  const found = await request('stored', { ...target(lane), cid: item.cid }, { buffer: false });
  if (found.stored) {
    return found;
  }
  await seal(lane, item);
  return null;
}

// One row per message, however many copies it was sealed in: pending until a copy is sent.
function showPending(room, item) {
  if ([...room.messages.values()].some((row) => sameMessage(row, item))) {
    return;
  }
  const key = `${room.id}:${PENDING_MARK}${String(item.order).padStart(ID_DIGITS, '0')}`;
  room.messages.set(key, {
    key, conversation: room.id, id: null, mine: true, text: item.text, sent_at: null, seen: true, pending: true,
    cid: item.cid, base: item.base ?? item.cid,
  });
}

function sameMessage(row, item) {
  return !row.pending && row.base !== undefined && row.base === (item.base ?? item.cid);
}

// The last copy of a message left its outbox without a sent row (its device was removed):
// the pending row goes too.
function dropPendingIfDone(room, item) {
  const base = item.base ?? item.cid;
  const waiting = [...room.lanes.values()].some((lane) => lane.outbox.some((other) => other.base === base));
  if (!waiting) {
    room.messages.forEach((row, key) => {
      if (row.pending && row.base === base) {
        room.messages.delete(key);
      }
    });
  }
}

// In order; stops at the first one that cannot go (offline, no answer, refused).
async function flushOutbox(lane) {
  while (lane.outbox.length && !lane.closed) {
    if (lane.keyWarning) {
      throw new Error(PROBLEMS.confirmKey);
    }
    await deliver(lane, lane.outbox[0]);
  }
}

async function deliver(lane, item) {
  if (!lane.session) {
    throw new Error(PROBLEMS.notReady);
  }
  let answer;
  try {
    answer = await sealedAnew(lane, item)
      ?? await request('send', { ...target(lane), envelope: item.envelope, cid: item.cid }, { buffer: false });
  } catch (error) {
    if (error?.code === DEVICE_REMOVED) {
      await closeLane(lane);
      return;
    }
    throw error;
  }
  const room = lane.room;
  const first = ![...room.messages.values()].some((row) => sameMessage(row, item));
  const row = first
    ? messageRow(room, { id: Number(answer.id), mine: true, text: item.text, sentAt: answer.sent_at ?? null })
    : null;
  if (row) {
    row.base = item.base ?? item.cid;
    room.messages.set(row.key, row);
  }
  lane.outbox = lane.outbox.filter((other) => other.cid !== item.cid);
  await store.commitSent(chat.userId, item.cid, row);
  if (row) {
    room.messages.forEach((shown, key) => {
      if (shown.pending && shown.base === row.base) {
        room.messages.delete(key);
      }
    });
  } else {
    dropPendingIfDone(room, item);
  }
  changed(room);
}

// Back online, the conversation ready again, or a new key confirmed: the outbox goes out.
function flushLater(lane) {
  if (lane.session && lane.outbox.length && !lane.keyWarning && !lane.closed) {
    enqueue(lane, () => flushOutbox(lane).catch((error) => retryOutboxSoon(lane, error)));
  }
}

// Online but not answered (or refused for now): try again a little later, with the same
// cid, so a message the node did store is not stored twice. Offline, reconnecting does it.
function retryOutboxSoon(lane, error) {
  if (lane.retryTimer || linkState().state !== LINK_STATES.online || !PASSING_SEND_ERRORS.has(error?.code)) {
    return;
  }
  lane.retryTimer = setTimeout(() => {
    lane.retryTimer = null;
    if (isOpen(lane)) {
      flushLater(lane);
    }
  }, OUTBOX_RETRY_MS);
}

function messageRow(room, { id, mine, text, sentAt }) {
  return {
    key: `${room.id}:${String(id).padStart(ID_DIGITS, '0')}`, conversation: room.id, id, mine, text, sent_at: sentAt,
    seen: mine || room.listeners.size > 0,
  };
}
