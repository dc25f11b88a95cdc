'use strict';

// The page's one Socket.IO connection to the node's /chat namespace (docs/api.md,
// "Matching and chat"), authenticated with the bearer token, opened when a chat
// screen first needs it and closed at logout. Every request is answered through
// its acknowledgement: {"ok": true, ...} or {"error": {"code", "message"}}.

import { io } from './vendor/socket.io.esm.min.js';

const NAMESPACE = '/chat';
const ACK_TIMEOUT_MS = 15_000;
const TIMEOUT_MESSAGE = 'The chat server did not answer in time. Please try again.';
const REFUSED_MESSAGE = 'The chat server refused the connection.';
const OFFLINE_MESSAGE = 'You are offline.';
const BAD_ANSWER_MESSAGE = 'The chat server gave an answer this app does not understand.';

export const LINK_STATES = {
  connecting: 'connecting',
  online: 'online',
  offline: 'offline',
  refused: 'refused',
};

export class ChatServerError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'ChatServerError';
    this.code = code;
  }
}

const link = {
  socket: null,
  token: null,
  state: LINK_STATES.offline,
  problem: null,
  statusListeners: new Set(),
  eventListeners: new Map(),
};

// Opens the connection for this token, or keeps the one already open for it. `device`
// names this device (chat-store.js deviceOf): the node refuses a device removed from the account.
export function openChatLink(token, device = null) {
  if (link.socket && link.token === token) {
    return;
  }
  closeChatLink();
  const auth = device ? { token, device } : { token };
  const socket = io(NAMESPACE, { auth, transports: ['websocket'] });
  Object.assign(link, { socket, token });
  setState(LINK_STATES.connecting, null);
  socket.on('connect', () => setState(LINK_STATES.online, null));
  socket.on('disconnect', () => setState(LINK_STATES.offline, null));
  socket.on('connect_error', (error) => connectFailed(socket, error));
  socket.onAny((event, payload) => dispatch(event, payload));
}

export function closeChatLink() {
  link.socket?.removeAllListeners();
  link.socket?.offAny();
  link.socket?.disconnect();
  Object.assign(link, { socket: null, token: null });
  setState(LINK_STATES.offline, null);
}

export function linkState() {
  return { state: link.state, problem: link.problem };
}

// Calls `listener({state, problem})` on every change; answers the function that stops it.
export function onLinkState(listener) {
  link.statusListeners.add(listener);
  return () => link.statusListeners.delete(listener);
}

// Calls `listener(payload)` for every server event of this name; answers the function that stops it.
export function onChatEvent(name, listener) {
  if (!link.eventListeners.has(name)) {
    link.eventListeners.set(name, new Set());
  }
  link.eventListeners.get(name).add(listener);
  return () => link.eventListeners.get(name)?.delete(listener);
}

// Sends one event and answers the server's acknowledgement, or throws ChatServerError.
// While the link is down an event waits for it, unless `buffer` is false: then it
// fails at once, and the caller keeps it (so nothing is sent twice on reconnect).
export async function request(event, payload, { buffer = true } = {}) {
  if (!link.socket) {
    throw new ChatServerError(REFUSED_MESSAGE, 'not_connected');
  }
  if (!buffer && !link.socket.connected) {
    throw new ChatServerError(OFFLINE_MESSAGE, 'offline');
  }
  let answer;
  try {
    answer = await link.socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
  } catch {
    throw new ChatServerError(TIMEOUT_MESSAGE, 'timeout');
  }
  if (answer?.ok === true) {
    return answer;
  }
  const error = answer?.error;
  throw new ChatServerError(error?.message || BAD_ANSWER_MESSAGE, error?.code || 'invalid_response');
}

// A refused handshake (bad token, not a patient) is final; a network failure is retried by the client.
function connectFailed(socket, error) {
  if (socket.active) {
    setState(LINK_STATES.connecting, null);
  } else {
    setState(LINK_STATES.refused, error?.message || REFUSED_MESSAGE);
  }
}

function setState(state, problem) {
  if (link.state === state && link.problem === problem) {
    return;
  }
  Object.assign(link, { state, problem });
  link.statusListeners.forEach((listener) => listener({ state, problem }));
}

function dispatch(event, payload) {
  link.eventListeners.get(event)?.forEach((listener) => {
    try {
      listener(payload);
    } catch (error) {
      console.error(`The "${event}" handler failed.`, error);
    }
  });
}
