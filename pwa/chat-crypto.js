'use strict';

// The chat protocol of docs/chat-protocol.md with WebCrypto; core/chat/ speaks
// the same one in Python (tests/core/vectors/chat-v1.json checks both).
//
// Identity keys are ECDSA P-256, generated non-extractable. Handshake:
//   initiator -> hello {conversation, key, peer, eph, nonce, sig}
//   responder -> reply {conversation, key, eph, nonce, sig, mac}
//   initiator -> confirm {conversation, mac}
// Session keys come from HKDF-SHA256(ECDH secret, salt = SHA-256(transcript))
// straight into non-extractable AES-GCM / HMAC CryptoKeys. Every state object
// returned here (identity, handshake state, session) is a plain object of
// CryptoKeys, strings, numbers and Uint8Arrays, so it can be put in IndexedDB
// as is; save it again after every call, since calls update it in place.
// Errors are ChatError with a stable `code` (same codes as Python) and
// ERROR_TEXT[code] is the sentence to show the user.
//
// Initiator: state = createInitiator(p); send(await makeHello(state));
//            on reply: {session, message} = await onReply(state, reply); send(message).
// Responder: state = createResponder(p); send(await onHello(state, hello));
//            on confirm: session = await onConfirm(state, confirm).
// Both: envelope = await sealMessage(session, text); text = await openText(session, envelope).
// After a reset: replaceSession(newSession, oldSession) keeps the old one's receiving
// half, so what the peer sealed under it before the reset is still read (by `sid`).

const VERSION = 1;
const PREFIX = 'medledger-chat/v1';
const HELLO_LABEL = `${PREFIX} hello`;
const REPLY_LABEL = `${PREFIX} reply`;
const MESSAGE_LABEL = `${PREFIX} msg`;
const SESSION_ID_LABEL = `${PREFIX} session id`;
const I2R = 'i2r';
const R2I = 'r2i';
const INITIATOR = 'initiator';
const RESPONDER = 'responder';
const NEW = 'new';
const AWAITING_HELLO = 'awaiting-hello';
const AWAITING_REPLY = 'awaiting-reply';
const AWAITING_CONFIRM = 'awaiting-confirm';
const DONE = 'done';

export const MAX_HANDSHAKE_BYTES = 4096;
export const MAX_ENVELOPE_BYTES = 65536;
export const MAX_PLAINTEXT_BYTES = 32768;
const MAX_CONVERSATION_CHARS = 128;
const MAX_SEQ = 2 ** 32 - 1;

const POINT_BYTES = 65;
const NONCE_BYTES = 32;
const SIGNATURE_BYTES = 64;
const MAC_BYTES = 32;
const SESSION_ID_BYTES = 16;
export const MAX_EARLIER_SESSIONS = 4;
const TAG_BYTES = 16;
const SHARED_BITS = 256;

const ECDSA_KEY = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SIGN = { name: 'ECDSA', hash: 'SHA-256' };
const ECDH_KEY = { name: 'ECDH', namedCurve: 'P-256' };
const AES_KEY = { name: 'AES-GCM', length: 256 };
const HMAC_KEY = { name: 'HMAC', hash: 'SHA-256', length: 256 };

const FIELDS = {
  hello: ['conversation', 'eph', 'key', 'nonce', 'peer', 'sig', 'type', 'v'],
  reply: ['conversation', 'eph', 'key', 'mac', 'nonce', 'sig', 'type', 'v'],
  confirm: ['conversation', 'mac', 'type', 'v'],
  msg: ['ct', 'seq', 'sid', 'type', 'v'],
};
const SIZES = {
  key: POINT_BYTES, peer: POINT_BYTES, eph: POINT_BYTES, nonce: NONCE_BYTES, sig: SIGNATURE_BYTES, mac: MAC_BYTES,
};
const HANDSHAKE_TYPES = ['hello', 'reply', 'confirm'];
const B64URL = /^[A-Za-z0-9_-]*$/;
const DEVICE_ID = /^[A-Za-z0-9_-]{0,22}$/;
const FINGERPRINT = /^[0-9a-f]{64}$/;

// What the user is shown for each error code.
export const ERROR_TEXT = {
  malformed: 'A chat message arrived damaged or in a format this app does not understand.',
  wrong_conversation: 'A handshake message belongs to another conversation.',
  identity_mismatch: 'The other person\'s chat key does not match the one registered on the ledger. '
    + 'The conversation was stopped.',
  bad_signature: 'A handshake message is not signed by the other person\'s registered key. '
    + 'The conversation was stopped.',
  confirmation_failed: 'The secure connection could not be confirmed: the handshake was tampered with.',
  unexpected_message: 'A handshake message arrived twice or out of turn and was ignored.',
  replayed: 'A message that was already received arrived again and was ignored.',
  out_of_order: 'A message arrived out of order; an earlier one is missing.',
  exhausted: 'This secure session is used up; a new one is needed.',
  decryption_failed: 'A message could not be decrypted: it was altered or is not for this session.',
  other_session: 'A message was sealed for an encrypted session this device does not have '
    + '(it was sent before this device joined the conversation, or before it was reset), so it cannot be read here.',
};

const subtle = globalThis.crypto.subtle;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export class ChatError extends Error {
  constructor(code, message) {
    super(message ?? ERROR_TEXT[code] ?? code);
    this.name = 'ChatError';
    this.code = code;
  }
}

// ---- identity

// A fresh identity: {privateKey (non-extractable), publicKey, key: b64url point}.
export async function generateIdentity() {
  const pair = await subtle.generateKey(ECDSA_KEY, false, ['sign', 'verify']);
  return identityFromKeys(pair.privateKey, pair.publicKey);
}

export async function identityFromKeys(privateKey, publicKey) {
  const raw = new Uint8Array(await subtle.exportKey('raw', publicKey));
  return { privateKey, publicKey, key: b64e(raw) };
}

export function publicKeyB64(identity) {
  return identity.key;
}

// SHA-256 of the 65-byte point, lowercase hex: the ledger's key id convention.
export async function fingerprint(keyB64) {
  const digest = new Uint8Array(await subtle.digest('SHA-256', decodeKey(keyB64, 'key')));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

// Compares the peer key pinned for a conversation with the one on the ledger now:
// 'first' (nothing pinned yet), 'same', or 'changed' (warn the user).
export function keyChange(pinnedB64, currentB64) {
  if (!pinnedB64) {
    return 'first';
  }
  return pinnedB64 === currentB64 ? 'same' : 'changed';
}

// A peer's devices (device id -> key fingerprint) known here, against their current ones
// on the ledger: {added (new devices: the notice), changed (another key: the changed-key
// warning), removed (revoked: never sealed for again)}, each sorted. A device that only
// took a device id (the same key, first registered without one) is neither added nor
// removed. Same rule as core.chat.device_changes.
export function deviceChanges(known, current) {
  checkDevices(known, 'known');
  checkDevices(current, 'current');
  const knownKeys = new Set(Object.values(known));
  const currentKeys = new Set(Object.values(current));
  const ids = (devices) => Object.keys(devices).sort();
  return {
    added: ids(current).filter((id) => !Object.hasOwn(known, id) && !knownKeys.has(current[id])),
    changed: ids(current).filter((id) => Object.hasOwn(known, id) && known[id] !== current[id]),
    removed: ids(known).filter((id) => !Object.hasOwn(current, id) && !currentKeys.has(known[id])),
  };
}

function checkDevices(devices, name) {
  const valid = isPlainObject(devices) && Object.entries(devices).every(
    ([id, fp]) => DEVICE_ID.test(id) && typeof fp === 'string' && FINGERPRINT.test(fp),
  );
  if (!valid) {
    throw new ChatError('malformed', `${name} maps device ids to key fingerprints`);
  }
}

// ---- handshake

// A new initiator handshake. `peerKey` is the responder's key from the ledger.
export function createInitiator({ identity, peerKey, conversation }) {
  checkParams(identity, peerKey, conversation);
  return { role: INITIATOR, step: NEW, conversation, identity, key: identity.key, peer: peerKey };
}

// Initiator, step 1: the hello to send (made once; the same message again after,
// for resending). `entropy` ({ephemeral: ECDH CryptoKeyPair, nonce: Uint8Array})
// is for test vectors only.
export async function makeHello(state, entropy = null) {
  if (state?.role !== INITIATOR || state.step === DONE) {
    throw new ChatError('unexpected_message', 'this handshake has no hello left to send');
  }
  if (state.step === AWAITING_REPLY) {
    return { ...state.hello };
  }
  const { ephemeral, nonce } = entropy ?? await freshEntropy();
  const eph = await rawPoint(ephemeral.publicKey);
  const own = decodeKey(state.key, 'key');
  const transcript = helloTranscript(state.conversation, own, decodeKey(state.peer, 'peer'), eph, nonce);
  const sig = await sign(state.identity, transcript);
  const message = {
    type: 'hello', v: VERSION, conversation: state.conversation, key: state.key, peer: state.peer,
    eph: b64e(eph), nonce: b64e(nonce), sig: b64e(sig),
  };
  Object.assign(state, {
    step: AWAITING_REPLY, identity: null, ephemeral: ephemeral.privateKey, transcript, hello: message,
  });
  return { ...message };
}

// A new responder handshake. `peerKey` is the initiator's key from the ledger.
export function createResponder({ identity, peerKey, conversation }) {
  checkParams(identity, peerKey, conversation);
  return { role: RESPONDER, step: AWAITING_HELLO, conversation, identity, key: identity.key, peer: peerKey };
}

// Responder, step 1: checks the hello and answers the reply to send.
export async function onHello(state, hello, entropy = null) {
  if (state?.role !== RESPONDER || state.step !== AWAITING_HELLO) {
    throw new ChatError('unexpected_message', 'a hello was already answered in this handshake (replayed hello)');
  }
  const fields = parseHandshake(hello, 'hello');
  checkSameConversation(state.conversation, fields, 'hello');
  const peer = decodeKey(state.peer, 'peer');
  const own = decodeKey(state.key, 'key');
  if (!sameBytes(fields.key, peer)) {
    throw new ChatError('identity_mismatch', 'the initiator\'s identity key is not the one registered on the ledger');
  }
  if (!sameBytes(fields.peer, own)) {
    throw new ChatError('identity_mismatch', 'the hello is addressed to another identity key than ours');
  }
  const peerEph = await importPoint(fields.eph, ECDH_KEY, []);
  const helloBytes = helloTranscript(state.conversation, fields.key, own, fields.eph, fields.nonce);
  await verify(peer, fields.sig, helloBytes, 'hello');
  const { ephemeral, nonce } = entropy ?? await freshEntropy();
  const eph = await rawPoint(ephemeral.publicKey);
  const transcript = concat(helloBytes, frame(REPLY_LABEL, eph, nonce));
  const th = await sha256(transcript);
  const keys = await keySchedule(ephemeral.privateKey, peerEph, th);
  const sig = await sign(state.identity, transcript);
  const mac = new Uint8Array(await subtle.sign('HMAC', keys.confirmR2I, confirmInput(R2I, th)));
  if (state.step !== AWAITING_HELLO) {
    throw new ChatError('unexpected_message', 'a hello was already answered in this handshake (replayed hello)');
  }
  const message = {
    type: 'reply', v: VERSION, conversation: state.conversation, key: state.key,
    eph: b64e(eph), nonce: b64e(nonce), sig: b64e(sig), mac: b64e(mac),
  };
  Object.assign(state, {
    step: AWAITING_CONFIRM, identity: null, th, reply: message,
    sendKey: keys.r2i, recvKey: keys.i2r, confirmKey: keys.confirmI2R,
  });
  return { ...message };
}

// Shortcuts: create and take the first step at once; both answer {state, message}.
export async function startInitiator(params, entropy = null) {
  const state = createInitiator(params);
  const message = await makeHello(state, entropy);
  return { state, message };
}

export async function startResponder(params, hello, entropy = null) {
  const state = createResponder(params);
  const message = await onHello(state, hello, entropy);
  return { state, message };
}

// Initiator, step 2: checks the reply; answers {session, message: confirm}.
export async function onReply(state, reply) {
  if (state?.role !== INITIATOR || state.step !== AWAITING_REPLY) {
    throw new ChatError('unexpected_message', 'a reply was already accepted (replayed reply) or none is awaited');
  }
  const fields = parseHandshake(reply, 'reply');
  checkSameConversation(state.conversation, fields, 'reply');
  const peer = decodeKey(state.peer, 'peer');
  if (!sameBytes(fields.key, peer)) {
    throw new ChatError('identity_mismatch', 'the responder\'s identity key is not the one registered on the ledger');
  }
  const peerEph = await importPoint(fields.eph, ECDH_KEY, []);
  const transcript = concat(state.transcript, frame(REPLY_LABEL, fields.eph, fields.nonce));
  await verify(peer, fields.sig, transcript, 'reply');
  const th = await sha256(transcript);
  const keys = await keySchedule(state.ephemeral, peerEph, th);
  if (!await subtle.verify('HMAC', keys.confirmR2I, fields.mac, confirmInput(R2I, th))) {
    throw new ChatError('confirmation_failed', 'the responder\'s key confirmation does not match our transcript');
  }
  if (state.step !== AWAITING_REPLY) {
    throw new ChatError('unexpected_message', 'a reply was already accepted (replayed reply)');
  }
  Object.assign(state, { step: DONE, ephemeral: null });
  const mac = new Uint8Array(await subtle.sign('HMAC', keys.confirmI2R, confirmInput(I2R, th)));
  const message = { type: 'confirm', v: VERSION, conversation: state.conversation, mac: b64e(mac) };
  return { session: newSession(state, INITIATOR, th, await sessionId(th), keys.i2r, keys.r2i), message };
}

// Responder, step 2: checks the initiator's confirmation; answers the session.
export async function onConfirm(state, confirm) {
  if (state?.role !== RESPONDER || state.step !== AWAITING_CONFIRM) {
    throw new ChatError('unexpected_message', 'the handshake is already confirmed (replayed confirm) or not started');
  }
  const fields = parseHandshake(confirm, 'confirm');
  checkSameConversation(state.conversation, fields, 'confirm');
  if (!await subtle.verify('HMAC', state.confirmKey, fields.mac, confirmInput(I2R, state.th))) {
    throw new ChatError('confirmation_failed', 'the initiator\'s key confirmation does not match our transcript');
  }
  if (state.step !== AWAITING_CONFIRM) {
    throw new ChatError('unexpected_message', 'the handshake is already confirmed (replayed confirm)');
  }
  const session = newSession(state, RESPONDER, state.th, await sessionId(state.th), state.sendKey, state.recvKey);
  Object.assign(state, { step: DONE, sendKey: null, recvKey: null, confirmKey: null });
  return session;
}

// ---- messages

// Encrypts the next message (string or Uint8Array). The counter moves before any
// await, so concurrent calls never share a nonce; save the session afterwards.
export async function sealMessage(session, plaintext) {
  const data = typeof plaintext === 'string' ? encoder.encode(plaintext) : plaintext;
  if (!(data instanceof Uint8Array) || data.length > MAX_PLAINTEXT_BYTES) {
    throw new ChatError('malformed', `a chat message is at most ${MAX_PLAINTEXT_BYTES} bytes`);
  }
  const seq = session.sendSeq;
  if (seq > MAX_SEQ) {
    throw new ChatError('exhausted');
  }
  session.sendSeq = seq + 1;
  const sid = await ensureSessionId(session);
  const aad = messageAad(session.conversation, b64d(sid, 'sid'), sendDirection(session), seq);
  const params = { name: 'AES-GCM', iv: messageNonce(seq), additionalData: aad };
  const ct = await subtle.encrypt(params, session.sendKey, data);
  return { type: 'msg', v: VERSION, sid, seq, ct: b64e(new Uint8Array(ct)) };
}

// Decrypts the next envelope from the peer: bytes. The envelope names its session
// (this one, or one it replaced); only seq == that session's next expected passes.
export async function openMessage(session, envelope) {
  const { sid, seq, ct } = parseEnvelope(envelope);
  const sidText = b64e(sid);
  const target = sidText === await ensureSessionId(session)
    ? session : (session.earlier ?? []).find((half) => half.sid === sidText);
  if (!target) {
    throw new ChatError('other_session', 'the message was sealed under a session this side does not hold');
  }
  checkNext(target, seq);
  const aad = messageAad(session.conversation, sid, recvDirection(target), seq);
  const params = { name: 'AES-GCM', iv: messageNonce(seq), additionalData: aad };
  let plaintext;
  try {
    plaintext = await subtle.decrypt(params, target.recvKey, ct);
  } catch {
    throw new ChatError('decryption_failed', 'decryption failed');
  }
  checkNext(target, seq); // another openMessage may have taken this seq meanwhile
  target.recvSeq = seq + 1;
  return new Uint8Array(plaintext);
}

// The id envelopes of this session carry (base64url of 16 bytes). Both sides derive
// it from the transcript hash.
export async function sessionIdOf(session) {
  return ensureSessionId(session);
}

// `session` (new) replaces `previous` of the same conversation: the receiving halves of
// `previous` and of the sessions it replaced (MAX_EARLIER_SESSIONS in all) are kept, so
// envelopes sealed under them before the reset are still read, once, in their order.
export async function replaceSession(session, previous) {
  const [sid, previousSid] = [await ensureSessionId(session), await ensureSessionId(previous)];
  if (previous.conversation !== session.conversation || previousSid === sid) {
    throw new ChatError('malformed', 'a session replaces an earlier one of the same conversation');
  }
  const half = { sid: previousSid, role: previous.role, recvKey: previous.recvKey, recvSeq: previous.recvSeq };
  const kept = [half, ...(previous.earlier ?? []).filter((other) => other.sid !== sid)];
  session.earlier = kept.slice(0, MAX_EARLIER_SESSIONS);
  return session;
}

export async function openText(session, envelope) {
  const bytes = await openMessage(session, envelope);
  try {
    return decoder.decode(bytes);
  } catch {
    throw new ChatError('malformed', 'the message is not UTF-8 text');
  }
}

// ---- internals: wire format

function newSession(state, role, th, sid, sendKey, recvKey) {
  return {
    type: 'session', v: VERSION, conversation: state.conversation, role, key: state.key, peer: state.peer,
    th: b64e(th), sid, sendKey, recvKey, sendSeq: 0, recvSeq: 0, earlier: [],
  };
}

async function sessionId(th) {
  const digest = await sha256(frame(SESSION_ID_LABEL, th));
  return b64e(digest.slice(0, SESSION_ID_BYTES));
}

// Sessions saved before envelopes carried their session id get it here, once.
async function ensureSessionId(session) {
  if (!session.sid) {
    session.sid = await sessionId(b64d(session.th, 'th'));
  }
  return session.sid;
}

function sendDirection(session) {
  return session.role === INITIATOR ? I2R : R2I;
}

function recvDirection(session) {
  return session.role === INITIATOR ? R2I : I2R;
}

function checkNext(session, seq) {
  if (seq < session.recvSeq) {
    throw new ChatError('replayed', `message ${seq} was already received (replay); expected ${session.recvSeq}`);
  }
  if (seq > session.recvSeq) {
    throw new ChatError('out_of_order', `message ${seq} arrived out of order; expected ${session.recvSeq}`);
  }
}

function checkParams(identity, peerKey, conversation) {
  checkConversation(conversation);
  decodeKey(peerKey, 'peer');
  decodeKey(identity?.key, 'key');
  if (!identity.privateKey) {
    throw new ChatError('malformed', 'an identity needs its private key');
  }
}

function checkConversation(conversation) {
  if (typeof conversation !== 'string' || conversation.length === 0 || conversation.length > MAX_CONVERSATION_CHARS) {
    throw new ChatError('malformed', 'the conversation id must be a string of 1 to 128 characters');
  }
}

function checkSameConversation(expected, fields, kind) {
  if (fields.conversation !== expected) {
    throw new ChatError('wrong_conversation', `the ${kind} is for another conversation`);
  }
}

function parseHandshake(message, expected) {
  if (!isPlainObject(message)) {
    throw new ChatError('malformed', 'a handshake message must be a JSON object');
  }
  if (serialisedSize(message) > MAX_HANDSHAKE_BYTES) {
    throw new ChatError('malformed', `a handshake message must be at most ${MAX_HANDSHAKE_BYTES} bytes`);
  }
  if (!HANDSHAKE_TYPES.includes(message.type)) {
    throw new ChatError('malformed', 'unknown handshake message type');
  }
  checkVersion(message);
  if (message.type !== expected) {
    throw new ChatError('unexpected_message', `expected a ${expected} message, got a ${message.type}`);
  }
  checkFields(message, expected);
  checkConversation(message.conversation);
  const fields = { conversation: message.conversation };
  FIELDS[expected].filter((name) => name in SIZES).forEach((name) => {
    fields[name] = decodeField(message[name], name, SIZES[name]);
  });
  return fields;
}

function parseEnvelope(envelope) {
  if (!isPlainObject(envelope) || envelope.type !== 'msg') {
    throw new ChatError('malformed', 'not a chat envelope');
  }
  checkVersion(envelope);
  checkFields(envelope, 'msg');
  if (serialisedSize(envelope) > MAX_ENVELOPE_BYTES) {
    throw new ChatError('malformed', `an envelope must be at most ${MAX_ENVELOPE_BYTES} bytes`);
  }
  const { seq } = envelope;
  if (!Number.isInteger(seq) || seq < 0 || seq > MAX_SEQ) {
    throw new ChatError('malformed', 'the envelope counter must be an integer from 0 to 2**32-1');
  }
  const sid = decodeField(envelope.sid, 'sid', SESSION_ID_BYTES);
  const ct = b64d(envelope.ct, 'ct');
  if (ct.length < TAG_BYTES) {
    throw new ChatError('malformed', 'the envelope ciphertext is too short');
  }
  return { sid, seq, ct };
}

function isPlainObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function serialisedSize(message) {
  try {
    return encoder.encode(JSON.stringify(message)).length;
  } catch {
    throw new ChatError('malformed', 'the message is not JSON');
  }
}

function checkVersion(message) {
  if (message.v !== VERSION) {
    throw new ChatError('malformed', `unsupported protocol version (this app speaks v${VERSION})`);
  }
}

function checkFields(message, kind) {
  const names = Object.keys(message).sort();
  const expected = FIELDS[kind];
  if (names.length !== expected.length || names.some((name, i) => name !== expected[i])) {
    throw new ChatError('malformed', `a ${kind} message has exactly the fields ${expected.join(', ')}`);
  }
}

function decodeField(value, name, size) {
  const data = b64d(value, name);
  if (data.length !== size) {
    throw new ChatError('malformed', `field '${name}' must be ${size} bytes`);
  }
  return data;
}

function decodeKey(keyB64, name) {
  const raw = decodeField(keyB64, name, POINT_BYTES);
  if (raw[0] !== 4) {
    throw new ChatError('malformed', 'not an uncompressed P-256 point');
  }
  return raw;
}

// ---- internals: crypto

async function freshEntropy() {
  const ephemeral = await subtle.generateKey(ECDH_KEY, false, ['deriveBits']);
  return { ephemeral, nonce: crypto.getRandomValues(new Uint8Array(NONCE_BYTES)) };
}

async function rawPoint(publicKey) {
  return new Uint8Array(await subtle.exportKey('raw', publicKey));
}

async function importPoint(raw, algorithm, usages) {
  if (raw.length !== POINT_BYTES || raw[0] !== 4) {
    throw new ChatError('malformed', 'not an uncompressed P-256 point');
  }
  try {
    return await subtle.importKey('raw', raw, algorithm, true, usages);
  } catch {
    throw new ChatError('malformed', 'not a point on P-256');
  }
}

async function sign(identity, data) {
  return new Uint8Array(await subtle.sign(ECDSA_SIGN, identity.privateKey, data));
}

async function verify(peerRaw, signature, data, what) {
  const key = await importPoint(peerRaw, ECDSA_KEY, ['verify']);
  if (!await subtle.verify(ECDSA_SIGN, key, signature, data)) {
    throw new ChatError('bad_signature', `the ${what} signature does not verify under the peer's registered key`);
  }
}

async function sha256(data) {
  return new Uint8Array(await subtle.digest('SHA-256', data));
}

async function keySchedule(ephemeralPrivate, peerEph, th) {
  const shared = await subtle.deriveBits({ name: 'ECDH', public: peerEph }, ephemeralPrivate, SHARED_BITS);
  const base = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  const derive = (label, algorithm, usages) => {
    const params = { name: 'HKDF', hash: 'SHA-256', salt: th, info: encoder.encode(`${PREFIX} ${label}`) };
    return subtle.deriveKey(params, base, algorithm, false, usages);
  };
  const [i2r, r2i, confirmI2R, confirmR2I] = await Promise.all([
    derive('key i2r', AES_KEY, ['encrypt', 'decrypt']),
    derive('key r2i', AES_KEY, ['encrypt', 'decrypt']),
    derive('confirm i2r', HMAC_KEY, ['sign', 'verify']),
    derive('confirm r2i', HMAC_KEY, ['sign', 'verify']),
  ]);
  return { i2r, r2i, confirmI2R, confirmR2I };
}

function confirmInput(direction, th) {
  return frame(`${PREFIX} confirm ${direction}`, th);
}

function helloTranscript(conversation, initiator, responder, eph, nonce) {
  return frame(HELLO_LABEL, conversation, initiator, responder, eph, nonce);
}

function messageNonce(seq) {
  const nonce = new Uint8Array(12);
  new DataView(nonce.buffer).setBigUint64(4, BigInt(seq));
  return nonce;
}

function messageAad(conversation, sid, direction, seq) {
  const counter = new Uint8Array(8);
  new DataView(counter.buffer).setBigUint64(0, BigInt(seq));
  return frame(MESSAGE_LABEL, conversation, sid, direction, counter);
}

// ---- internals: bytes

// Each part as a 4-byte big-endian length then its bytes (strings as UTF-8).
function frame(...parts) {
  const chunks = parts.map((part) => (typeof part === 'string' ? encoder.encode(part) : part));
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + 4 + chunk.length, 0));
  const view = new DataView(out.buffer);
  let offset = 0;
  chunks.forEach((chunk) => {
    view.setUint32(offset, chunk.length);
    out.set(chunk, offset + 4);
    offset += 4 + chunk.length;
  });
  return out;
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

export function b64e(bytes) {
  let binary = '';
  bytes.forEach((byte) => {
    binary += String.fromCharCode(byte);
  });
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

// Strict unpadded base64url: anything that would not re-encode to the same text is refused.
export function b64d(text, name = 'value') {
  if (typeof text !== 'string' || !B64URL.test(text) || text.length % 4 === 1) {
    throw new ChatError('malformed', `field '${name}' is not unpadded base64url`);
  }
  const binary = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
  if (b64e(bytes) !== text) {
    throw new ChatError('malformed', `field '${name}' is not unpadded base64url`);
  }
  return bytes;
}
