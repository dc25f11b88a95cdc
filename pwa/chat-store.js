'use strict';

// What the chat keeps on this device, in one IndexedDB database per user
// ("medledger-chat-<user id>"), so one person's chat never opens another's:
// - identity: this user's chat identity key pair. The private key is a
//   non-extractable WebCrypto key, so its bytes can never be read, only used by
//   this origin. It survives logout so that the same user logging in again on
//   this device keeps their key (and their peers see no changed-key warning).
// - peers: the identity key last verified for each conversation's peer (public),
//   kept too, so a key that changes later is noticed.
// - sessions, handshakes, messages: session keys, handshakes under way and the
//   decrypted conversation. These are the patient's private data: logout deletes
//   them (forgetConversations), so nobody using the device next can read them.
//   The next login runs a fresh handshake; messages of the old session stay
//   ciphertext on the node.

const DB_PREFIX = 'medledger-chat-';
const DB_VERSION = 1;
const IDENTITY = 'identity';
const PEERS = 'peers';
const SESSIONS = 'sessions';
const HANDSHAKES = 'handshakes';
const MESSAGES = 'messages';
const BY_CONVERSATION = 'by_conversation';
const SELF = 'self';
const PRIVATE_STORES = [SESSIONS, HANDSHAKES, MESSAGES];

const open = new Map();

export function identityOf(userId) {
  return read(userId, IDENTITY, SELF);
}

export function saveIdentity(userId, identity) {
  return write(userId, IDENTITY, SELF, identity);
}

export function pinnedPeerKey(userId, conversation) {
  return read(userId, PEERS, conversation);
}

export function pinPeerKey(userId, conversation, key) {
  return write(userId, PEERS, conversation, key);
}

export function sessionOf(userId, conversation) {
  return read(userId, SESSIONS, conversation);
}

export function saveSession(userId, conversation, session) {
  return write(userId, SESSIONS, conversation, session);
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

// Message rows: {conversation, key, id, mine, text, sent_at, seen}, and for a message not
// sent yet also {pending, envelope, th}; `key` orders them.
export function saveMessage(userId, row) {
  return write(userId, MESSAGES, null, row);
}

export function deleteMessage(userId, key) {
  return remove(userId, MESSAGES, key);
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

// Another user's private chat data must never stay readable here: it goes when someone else
// signs in (that user may not have logged out, e.g. their session expired while the app was closed).
export async function forgetOtherUsers(userId) {
  const ours = DB_PREFIX + String(userId);
  const names = (await indexedDB.databases?.() ?? []).map((db) => db.name);
  const others = names.filter((name) => name?.startsWith(DB_PREFIX) && name !== ours);
  await Promise.all(others.map((name) => forgetConversations(name.slice(DB_PREFIX.length))));
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
    opening.onsuccess = () => resolve(opening.result);
    opening.onerror = () => reject(opening.error);
    opening.onblocked = () => reject(new Error('Close the app in your other tabs, then try again.'));
  });
}

function createStores(db) {
  [IDENTITY, PEERS, SESSIONS, HANDSHAKES].forEach((store) => db.createObjectStore(store));
  const messages = db.createObjectStore(MESSAGES, { keyPath: 'key' });
  messages.createIndex(BY_CONVERSATION, 'conversation');
}

async function read(userId, store, key) {
  const db = await database(userId);
  return (await done(db.transaction(store).objectStore(store).get(key))) ?? null;
}

async function write(userId, store, key, value) {
  const db = await database(userId);
  const tx = db.transaction(store, 'readwrite');
  if (key === null) {
    tx.objectStore(store).put(value);
  } else {
    tx.objectStore(store).put(value, key);
  }
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
