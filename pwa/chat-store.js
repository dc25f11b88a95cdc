'use strict';

// What the chat keeps on this device, in one IndexedDB database per user
// ("medledger-chat-<user id>"), so one person's chat never opens another's:
// - identity: this user's chat identity key pair. The private key is a
//   non-extractable WebCrypto key, so its bytes can never be read, only used by
//   this origin. It survives logout, as decided for issue 6: the same user
//   logging in again on this device keeps their key (their peers see no
//   changed-key warning), and a key nobody can read or export reveals nothing
//   about the conversations, which are deleted.
// Keys: what belongs to the conversation as a whole (its messages, when this device
// joined, the peer's devices seen) is kept under the conversation id; what belongs to one
// lane, this device and one other device (chat-client.js), under the lane's key
// "<conversation>|peer|<device>" or "<conversation>|own|<device>": its session,
// handshake, cursor, pinned key and outbox.
// - peers: per lane, the other device's key pinned after a handshake and a key
//   change the patient has not confirmed yet (public keys only). Kept too, so a
//   key that changes later is noticed, and the warning survives a reload.
// - sessions, handshakes, messages, outbox, cursors: session keys, handshakes
//   under way, the decrypted conversation, sealed messages not sent yet, and how
//   far each conversation was read. These are the patient's private data: logout
//   deletes them (forgetConversations), and so does the next start of the app on
//   this device for anyone but the one signed in (forgetOtherUsers): a session
//   that expired, or another person signing in, never leaves them readable.
//   The next login runs a fresh handshake; messages of the old session stay
//   ciphertext on the node.
//
// Every user with chat data here is listed in localStorage (USERS_KEY, outside
// the "medledger." keys that session.js clears), so their data can be found and
// wiped without a session.

const DB_PREFIX = 'medledger-chat-';
const DB_VERSION = 2;
const USERS_KEY = 'medledger-chat-users';
const IDENTITY = 'identity';
const PEERS = 'peers';
const SESSIONS = 'sessions';
const HANDSHAKES = 'handshakes';
const MESSAGES = 'messages';
const OUTBOX = 'outbox';
const CURSORS = 'cursors';
const BY_CONVERSATION = 'by_conversation';
const SELF = 'self';
const DEVICE = 'device';
const DEVICE_BYTES = 16;
// A session given up (a hole that could not be filled) waits under this key until the
// new handshake completes: the new session then keeps its receiving half.
const RETIRED = '#retired';
const JOINED = '#joined';
const DEVICES = '#devices';
const PRIVATE_STORES = [SESSIONS, HANDSHAKES, MESSAGES, OUTBOX, CURSORS];

const open = new Map();

export function identityOf(userId) {
  return read(userId, IDENTITY, SELF);
}

export function saveIdentity(userId, identity) {
  return write(userId, IDENTITY, SELF, identity);
}

// This device's id for this user (16 random bytes, base64url), made once and kept like the
// identity key: the node ties the sign-in to it, so removing the device from another one
// ends it.
export async function deviceOf(userId) {
  const saved = await read(userId, IDENTITY, DEVICE);
  if (saved) {
    return saved;
  }
  const bytes = crypto.getRandomValues(new Uint8Array(DEVICE_BYTES));
  const device = btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  await write(userId, IDENTITY, DEVICE, device);
  return device;
}

// {key, fingerprint} pinned, and `change`: {key, fingerprint, since} not confirmed yet, or null.
export function pinOf(userId, conversation) {
  return read(userId, PEERS, conversation);
}

export function savePin(userId, conversation, pin) {
  return write(userId, PEERS, conversation, pin);
}

// The peer's devices seen here, {known: {device id: fingerprint}, added: [fingerprints
// not acknowledged yet]}: public keys only, kept like the pin.
export function devicesOf(userId, conversation) {
  return read(userId, PEERS, conversation + DEVICES);
}

export function saveDevices(userId, conversation, devices) {
  return write(userId, PEERS, conversation + DEVICES, devices);
}

export function sessionOf(userId, conversation) {
  return read(userId, SESSIONS, conversation);
}

// The session stops sealing (a new handshake is under way) but can still read what the
// peer sealed under it before: it moves to the retired slot.
export async function retireSession(userId, conversation, session) {
  const db = await database(userId);
  const tx = db.transaction(SESSIONS, 'readwrite');
  tx.objectStore(SESSIONS).delete(conversation);
  if (session) {
    tx.objectStore(SESSIONS).put(session, conversation + RETIRED);
  }
  await finished(tx);
}

export function retiredOf(userId, conversation) {
  return read(userId, SESSIONS, conversation + RETIRED);
}

// When this device joined a conversation that had messages before (ISO time): it reads
// from then on; the earlier ones stay on the devices that received them. Wiped at logout.
export function joinedOf(userId, conversation) {
  return read(userId, SESSIONS, conversation + JOINED);
}

export function saveJoined(userId, conversation, at) {
  return write(userId, SESSIONS, conversation + JOINED, at);
}

export function handshakeOf(userId, conversation) {
  return read(userId, HANDSHAKES, conversation);
}

export function saveHandshake(userId, conversation, state) {
  return write(userId, HANDSHAKES, conversation, state);
}

export function dropHandshake(userId, conversation) {
  return remove(userId, HANDSHAKES, conversation);
}

// The highest server id of this conversation that was fully handled (and acknowledged).
export async function cursorOf(userId, conversation) {
  return (await read(userId, CURSORS, conversation)) ?? 0;
}

export function saveCursor(userId, conversation, acked) {
  return write(userId, CURSORS, conversation, acked);
}

// Message rows: {conversation, key, id, mine, text, sent_at, seen}; `key` orders them.
// A received message is handled in one transaction: the session's counter, the
// readable row and the cursor move together, or none of them does.
// `retired`: it was read with the retired session (no new one yet), which is saved back there.
export async function commitReceived(userId, conversation, { session, row, acked, retired = false }) {
  const db = await database(userId);
  const tx = db.transaction([SESSIONS, MESSAGES, CURSORS], 'readwrite');
  tx.objectStore(SESSIONS).put(session, retired ? conversation + RETIRED : conversation);
  tx.objectStore(MESSAGES).put(row);
  tx.objectStore(CURSORS).put(acked, conversation);
  await finished(tx);
}

// A handshake completed on the item `acked`: the new session replaces the old one
// and the handshake state goes, together with the cursor.
export async function commitSession(userId, conversation, { session, acked }) {
  const db = await database(userId);
  const tx = db.transaction([SESSIONS, HANDSHAKES, CURSORS], 'readwrite');
  tx.objectStore(SESSIONS).put(session, conversation);
  tx.objectStore(SESSIONS).delete(conversation + RETIRED);
  tx.objectStore(HANDSHAKES).delete(conversation);
  tx.objectStore(CURSORS).put(acked, conversation);
  await finished(tx);
}

// Outbox items: {cid, base, conversation (the lane's key), room, order, text, envelope, th};
// envelope and th are null until it is sealed. One message has one item per lane, all with
// the same `base`. `cid` is the id the node dedupes a resent copy on; it stays the same when
// the item is sealed again under a new session.
export async function outboxOf(userId, conversation) {
  const db = await database(userId);
  const items = await done(db.transaction(OUTBOX).objectStore(OUTBOX).index(BY_CONVERSATION).getAll(conversation));
  return items.sort((a, b) => a.order - b.order);
}

// Sealing advances the session's send counter: the envelope and the advanced
// session are kept together, before the first attempt to send, so a counter is
// never used twice nor skipped (the peer would see a gap).
export async function commitSealed(userId, conversation, { session, item }) {
  const db = await database(userId);
  const tx = db.transaction([SESSIONS, OUTBOX], 'readwrite');
  tx.objectStore(SESSIONS).put(session, conversation);
  tx.objectStore(OUTBOX).put(item);
  await finished(tx);
}

// The node took it: the outbox item becomes a sent message row (null: the message has its
// row already, from the copy for another device, or the copy's device was removed).
export async function commitSent(userId, cid, row) {
  const db = await database(userId);
  const tx = db.transaction([OUTBOX, MESSAGES], 'readwrite');
  tx.objectStore(OUTBOX).delete(cid);
  if (row) {
    tx.objectStore(MESSAGES).put(row);
  }
  await finished(tx);
}

// Messages received but not yet shown, per conversation id.
export async function unseenCounts(userId) {
  const db = await database(userId);
  const rows = await done(db.transaction(MESSAGES).objectStore(MESSAGES).getAll());
  const counts = {};
  rows.filter((row) => !row.mine && !row.seen).forEach((row) => {
    counts[row.conversation] = (counts[row.conversation] ?? 0) + 1;
  });
  return counts;
}

export async function markSeen(userId, conversation) {
  const rows = await messagesOf(userId, conversation);
  const unseen = rows.filter((row) => !row.mine && !row.seen);
  if (!unseen.length) {
    return;
  }
  const db = await database(userId);
  const tx = db.transaction(MESSAGES, 'readwrite');
  unseen.forEach((row) => tx.objectStore(MESSAGES).put({ ...row, seen: true }));
  await finished(tx);
}

export async function messagesOf(userId, conversation) {
  const db = await database(userId);
  return done(db.transaction(MESSAGES).objectStore(MESSAGES).index(BY_CONVERSATION).getAll(conversation));
}

// Logout: the user's private chat data goes; their identity key and pinned peer keys stay.
export async function forgetConversations(userId) {
  const db = await database(userId);
  const tx = db.transaction(PRIVATE_STORES, 'readwrite');
  PRIVATE_STORES.forEach((name) => tx.objectStore(name).clear());
  await finished(tx);
}

// This user is about to keep chat data here: listed first, so it can always be found.
export function rememberUser(userId) {
  const users = listedUsers();
  if (!users.includes(String(userId))) {
    writeUsers([...users, String(userId)]);
  }
}

// Every other user's private chat data goes (signedIn null: everybody's). Listed
// users, and any chat database the browser knows of (from before the list).
export async function forgetOtherUsers(signedIn) {
  const ours = signedIn === null || signedIn === undefined ? null : String(signedIn);
  const known = await databaseNames();
  const others = [...new Set([...listedUsers(), ...known])].filter((userId) => userId !== ours);
  const failed = [];
  await Promise.all(others.map((userId) => forgetConversations(userId).catch(() => failed.push(userId))));
  writeUsers([...(ours === null ? [] : [ours]), ...failed]);
  others.forEach((userId) => closeDatabase(userId));
}

async function databaseNames() {
  try {
    const names = (await indexedDB.databases?.() ?? []).map((db) => db.name);
    return names.filter((name) => name?.startsWith(DB_PREFIX)).map((name) => name.slice(DB_PREFIX.length));
  } catch {
    return [];
  }
}

function listedUsers() {
  try {
    const users = JSON.parse(localStorage.getItem(USERS_KEY) ?? '[]');
    return Array.isArray(users) ? users.map(String) : [];
  } catch {
    return [];
  }
}

function writeUsers(users) {
  try {
    if (users.length) {
      localStorage.setItem(USERS_KEY, JSON.stringify([...new Set(users)]));
    } else {
      localStorage.removeItem(USERS_KEY);
    }
  } catch {
    // Without localStorage only the browser's own list of databases is left to find them.
  }
}

function closeDatabase(userId) {
  const name = DB_PREFIX + String(userId);
  open.get(name)?.then((db) => db.close()).catch(() => {});
  open.delete(name);
}

export function closeDatabases() {
  open.forEach((pending) => pending.then((db) => db.close()).catch(() => {}));
  open.clear();
}

function database(userId) {
  if (userId === null || userId === undefined) {
    return Promise.reject(new Error('Nobody is signed in.'));
  }
  const name = DB_PREFIX + String(userId);
  if (!open.has(name)) {
    open.set(name, openDatabase(name));
  }
  return open.get(name);
}

function openDatabase(name) {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(name, DB_VERSION);
    opening.onupgradeneeded = () => createStores(opening.result);
    opening.onsuccess = () => {
      // Another tab upgrading the database must not be blocked by this one.
      opening.result.onversionchange = () => opening.result.close();
      resolve(opening.result);
    };
    opening.onerror = () => reject(opening.error);
    opening.onblocked = () => reject(new Error('Close the app in your other tabs, then try again.'));
  });
}

// Version 1 had no outbox (messages not sent yet were rows of `messages`) and no
// cursors; those rows cannot be trusted not to skip a counter, so an upgrade drops
// the private stores and starts clean (a fresh handshake follows).
function createStores(db) {
  [IDENTITY, PEERS].filter((name) => !db.objectStoreNames.contains(name))
    .forEach((name) => db.createObjectStore(name));
  PRIVATE_STORES.filter((name) => db.objectStoreNames.contains(name)).forEach((name) => db.deleteObjectStore(name));
  [SESSIONS, HANDSHAKES, CURSORS].forEach((name) => db.createObjectStore(name));
  db.createObjectStore(MESSAGES, { keyPath: 'key' }).createIndex(BY_CONVERSATION, 'conversation');
  db.createObjectStore(OUTBOX, { keyPath: 'cid' }).createIndex(BY_CONVERSATION, 'conversation');
}

async function read(userId, store, key) {
  const db = await database(userId);
  return (await done(db.transaction(store).objectStore(store).get(key))) ?? null;
}

async function write(userId, store, key, value) {
  const db = await database(userId);
  const tx = db.transaction(store, 'readwrite');
  tx.objectStore(store).put(value, key);
  await finished(tx);
}

async function remove(userId, store, key) {
  const db = await database(userId);
  const tx = db.transaction(store, 'readwrite');
  tx.objectStore(store).delete(key);
  await finished(tx);
}

function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function finished(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new Error('The chat storage refused the change.'));
  });
}
