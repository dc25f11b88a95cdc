"""pwa/chat-crypto.js in headless Chromium: the shared vectors, and live handshakes against core.chat.

The module is loaded the way the app loads it, from the node under test at
/app/chat-crypto.js, in a page of the node's origin. Vectors: the file
tests/core/test_chat_protocol.py checks in Python is run in the browser; every
deterministic output must be byte-identical, every Python signature must verify and
every negative case must fail with the same error code. Interop: a full handshake
and messages both ways with one side in the browser (WebCrypto, non-extractable
keys) and the other in Python, in both roles, including a browser restart in the
middle of the conversation (session kept in IndexedDB).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from core.chat import IdentityKey, Initiator, PublicIdentity, Responder, Session
from core.encoding import b64d
from core.errors import ChatDecryptionError, ReplayedMessage
from tests.browser.support import UI_TIMEOUT, Node

VECTORS = Path(__file__).resolve().parents[1] / "core" / "vectors" / "chat-v1.json"
CONVERSATION = "1207"

# Runs in the page: helpers on window.chatTest, shared by the vector run and the interop steps.
SETUP = """
async () => {
  const chat = await import('/app/chat-crypto.js');
  const s = crypto.subtle;
  const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' };
  const ECDH = { name: 'ECDH', namedCurve: 'P-256' };
  const identity = async (side) => chat.identityFromKeys(
    await s.importKey('pkcs8', chat.b64d(side.identity_pkcs8), ECDSA, false, ['sign']),
    await s.importKey('raw', chat.b64d(side.key), ECDSA, true, ['verify']));
  const entropy = async (side) => ({
    ephemeral: {
      privateKey: await s.importKey('pkcs8', chat.b64d(side.ephemeral_pkcs8), ECDH, false, ['deriveBits']),
      publicKey: await s.importKey('raw', chat.b64d(side.eph), ECDH, true, []),
    },
    nonce: chat.b64d(side.nonce),
  });
  const idb = (mode, action) => new Promise((resolve, reject) => {
    const opening = indexedDB.open('chat-vector-test', 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore('kept');
    opening.onerror = () => reject(opening.error);
    opening.onsuccess = () => {
      const tx = opening.result.transaction('kept', mode);
      const request = action(tx.objectStore('kept'));
      tx.oncomplete = () => { opening.result.close(); resolve(request.result); };
      tx.onerror = () => reject(tx.error);
    };
  });
  window.chatTest = {
    chat, identity, entropy,
    put: (key, value) => idb('readwrite', (store) => store.put(value, key)),
    get: (key) => idb('readonly', (store) => store.get(key)),
    caught: async (promise) => {
      try {
        await promise;
        return null;
      } catch (error) {
        return error.name === 'ChatError' ? error.code : String(error);
      }
    },
  };
  return Object.keys(chat).sort();
}
"""

RUN_VECTORS = """
async (vec) => {
  const { chat, identity, entropy, caught } = window.chatTest;
  const I = await identity(vec.initiator);
  const R = await identity(vec.responder);
  const conversation = vec.conversation;
  const initiator = async () => {
    const state = chat.createInitiator({ identity: I, peerKey: vec.responder.key, conversation });
    const hello = await chat.makeHello(state, await entropy(vec.initiator));
    return { state, hello };
  };
  const responder = (ledgerKey) => chat.createResponder(
    { identity: R, peerKey: ledgerKey ?? vec.initiator.key, conversation });
  const answered = async () => {
    const state = responder();
    const reply = await chat.onHello(state, vec.hello, await entropy(vec.responder));
    return { state, reply };
  };
  const sessions = async () => {
    const { state: i } = await initiator();
    const { state: r } = await answered();
    const { session: iS, message: confirm } = await chat.onReply(i, vec.reply);
    const rS = await chat.onConfirm(r, vec.confirm);
    return { iS, rS, confirm, iState: i, rState: r };
  };
  const out = {};
  out.hello = (await initiator()).hello;
  const { reply } = await answered();
  out.reply = reply;
  const { iS, rS, confirm, iState, rState } = await sessions();
  out.confirm = confirm;
  out.steps = [iState.step, rState.step];
  out.th = [iS.th, rS.th];
  out.extractable = [iS.sendKey, iS.recvKey, rS.sendKey, rS.recvKey].map((key) => key.extractable);
  const senders = { i2r: iS, r2i: rS };
  const receivers = { i2r: rS, r2i: iS };
  out.messages = [];
  for (const m of vec.messages) {
    const envelope = await chat.sealMessage(senders[m.dir], m.plaintext);
    const text = await chat.openText(receivers[m.dir], m.envelope);
    out.messages.push({ envelope, text });
  }
  out.negative = [];
  for (const c of vec.negative) {
    let run;
    if (c.step === 'hello') {
      run = async () => {
        const state = responder(c.ledger_key);
        for (const m of c.before) await chat.onHello(state, m, await entropy(vec.responder));
        await chat.onHello(state, c.message, await entropy(vec.responder));
      };
    } else if (c.step === 'reply') {
      run = async () => {
        const { state } = await initiator();
        for (const m of c.before) await chat.onReply(state, m);
        await chat.onReply(state, c.message);
      };
    } else if (c.step === 'confirm') {
      run = async () => {
        const { state } = await answered();
        for (const m of c.before) await chat.onConfirm(state, m);
        await chat.onConfirm(state, c.message);
      };
    } else {
      run = async () => {
        const both = await sessions();
        const session = c.dir === 'i2r' ? both.rS : both.iS;
        for (const m of c.before) await chat.openMessage(session, m);
        const before = session.recvSeq;
        try {
          await chat.openMessage(session, c.message);
        } finally {
          if (session.recvSeq !== before) throw new Error('a refused envelope moved the counter');
        }
      };
    }
    out.negative.push({ name: c.name, code: await caught(run()) });
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


@pytest.fixture
def page(browser: Browser, node: Node) -> Iterator[Page]:
    context = browser.new_context(base_url=node.url, service_workers="block")
    context.set_default_timeout(UI_TIMEOUT)
    page = context.new_page()
    load_module(page, node)
    try:
        yield page
    finally:
        context.close()


def load_module(page: Page, node: Node) -> list[str]:
    page.goto(node.url + "/app/")
    return page.evaluate(SETUP)


def without_sig(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "sig"}


# ---- vectors


@pytest.fixture
def browser_run(page: Page, vec: dict[str, Any]) -> dict[str, Any]:
    return page.evaluate(RUN_VECTORS, vec)


def test_module_exports_the_api(page: Page, node: Node):
    exports = set(load_module(page, node))
    assert {"generateIdentity", "publicKeyB64", "fingerprint", "keyChange", "createInitiator", "makeHello",
            "onReply", "createResponder", "onHello", "onConfirm", "startInitiator", "startResponder",
            "sealMessage", "openMessage", "openText", "ChatError", "ERROR_TEXT"} <= exports  # fmt: skip


def test_browser_handshake_matches_the_vectors(browser_run, vec):
    assert without_sig(browser_run["hello"]) == without_sig(vec["hello"])
    assert without_sig(browser_run["reply"]) == without_sig(vec["reply"])
    assert browser_run["reply"]["mac"] == vec["reply"]["mac"]
    assert browser_run["confirm"] == vec["confirm"]
    assert browser_run["th"] == [vec["transcript_hash"]] * 2
    assert browser_run["steps"] == ["done", "done"]
    assert browser_run["extractable"] == [False] * 4


def test_browser_signatures_verify_in_python(browser_run, vec):
    initiator = PublicIdentity.from_b64(vec["initiator"]["key"])
    responder = PublicIdentity.from_b64(vec["responder"]["key"])
    initiator.verify(b64d(browser_run["hello"]["sig"]), b64d(vec["hello_transcript"]), "hello")
    responder.verify(b64d(browser_run["reply"]["sig"]), b64d(vec["transcript"]), "reply")


def test_browser_messages_match_the_vectors(browser_run, vec):
    assert [m["envelope"] for m in browser_run["messages"]] == [m["envelope"] for m in vec["messages"]]
    assert [m["text"] for m in browser_run["messages"]] == [m["plaintext"] for m in vec["messages"]]


def test_invalid_vectors_fail_alike_in_the_browser(browser_run, vec):
    expected = [{"name": c["name"], "code": c["error"]} for c in vec["negative"]]
    assert browser_run["negative"] == expected


def test_browser_helpers(page: Page, vec):
    result = page.evaluate(
        """async (vec) => {
          const { chat, caught } = window.chatTest;
          const identity = await chat.generateIdentity();
          return {
            extractable: identity.privateKey.extractable,
            key: chat.publicKeyB64(identity),
            fingerprint: await chat.fingerprint(vec.initiator.key),
            changes: [chat.keyChange(null, 'a'), chat.keyChange('a', 'a'), chat.keyChange('a', 'b')],
            badKey: await caught(chat.fingerprint('AAAA')),
            badPeer: await caught(Promise.resolve().then(() => chat.createInitiator(
              { identity, peerKey: 'BAAA', conversation: '1' }))),
            cloned: structuredClone(identity).privateKey.type,
          };
        }""",
        vec,
    )
    assert result["extractable"] is False
    assert len(PublicIdentity.from_b64(result["key"]).raw) == 65
    assert result["fingerprint"] == PublicIdentity.from_b64(vec["initiator"]["key"]).fingerprint
    assert result["changes"] == ["first", "same", "changed"]
    assert result["badKey"] == result["badPeer"] == "malformed"
    assert result["cloned"] == "private"


# ---- interop: one side in the browser, the other in Python


def browser_identity(page: Page) -> PublicIdentity:
    key = page.evaluate(
        """async () => {
          const t = window.chatTest;
          t.me = await t.chat.generateIdentity();
          await t.put('identity', t.me);
          return t.me.key;
        }"""
    )
    return PublicIdentity.from_b64(key)


def browser_exchange(page: Page, incoming: list[dict[str, Any]], outgoing: list[str]) -> dict[str, Any]:
    """The browser opens `incoming` in order, then seals `outgoing`; its session is saved to IndexedDB."""
    return page.evaluate(
        """async ([incoming, outgoing]) => {
          const t = window.chatTest;
          const texts = [];
          for (const envelope of incoming) texts.push(await t.chat.openText(t.session, envelope));
          const envelopes = [];
          for (const text of outgoing) envelopes.push(await t.chat.sealMessage(t.session, text));
          await t.put('session', t.session);
          return { texts, envelopes };
        }""",
        [incoming, outgoing],
    )


def python_to_browser_and_back(page: Page, session: Session, node: Node) -> None:
    """Messages both ways, interleaved, a browser restart (session from IndexedDB), and a replay refused."""
    to_browser = [session.seal(f"from python {i} \u00e9\U0001f600".encode()) for i in range(3)]
    result = browser_exchange(page, to_browser, ["from the browser 0", "from the browser 1"])
    assert result["texts"] == [f"from python {i} \u00e9\U0001f600" for i in range(3)]
    assert [session.open(e).decode() for e in result["envelopes"]] == ["from the browser 0", "from the browser 1"]

    load_module(page, node)  # a fresh page: only what IndexedDB kept survives
    later = session.seal(b"after the restart")
    restored = page.evaluate(
        """async () => {
          const t = window.chatTest;
          t.session = await t.get('session');
          return { recv: t.session.recvSeq, send: t.session.sendSeq, extractable: t.session.sendKey.extractable };
        }"""
    )
    assert restored == {"recv": 3, "send": 2, "extractable": False}
    result = browser_exchange(page, [later], ["after the restart too"])
    assert result["texts"] == ["after the restart"]
    assert session.open(result["envelopes"][0]) == b"after the restart too"

    replay = page.evaluate(
        "async (envelope) => { const t = window.chatTest; return t.caught(t.chat.openMessage(t.session, envelope)); }",
        later,
    )
    assert replay == "replayed"
    with pytest.raises(ReplayedMessage):
        session.open(result["envelopes"][0])
    tampered = dict(result["envelopes"][0], seq=session.recv_seq)
    with pytest.raises(ChatDecryptionError):
        session.open(tampered)


def test_browser_initiator_with_python_responder(page: Page, node: Node):
    python = IdentityKey.generate()
    browser_key = browser_identity(page)
    hello = page.evaluate(
        """async ([peerKey, conversation]) => {
          const t = window.chatTest;
          t.state = t.chat.createInitiator({ identity: await t.get('identity'), peerKey, conversation });
          const hello = await t.chat.makeHello(t.state);
          await t.put('handshake', t.state);
          return hello;
        }""",
        [python.public.b64, CONVERSATION],
    )
    assert len(json.dumps(hello)) <= 4096
    responder = Responder(python, browser_key, CONVERSATION)
    reply = responder.on_hello(hello)
    load_module(page, node)  # the handshake state waits in IndexedDB while the reply travels
    confirm = page.evaluate(
        """async (reply) => {
          const t = window.chatTest;
          const state = await t.get('handshake');
          const { session, message } = await t.chat.onReply(state, reply);
          t.session = session;
          return message;
        }""",
        reply,
    )
    session = responder.on_confirm(confirm)
    python_to_browser_and_back(page, session, node)


def test_browser_responder_with_python_initiator(page: Page, node: Node):
    python = IdentityKey.generate()
    browser_key = browser_identity(page)
    initiator = Initiator(python, browser_key, CONVERSATION)
    reply = page.evaluate(
        """async ([peerKey, conversation, hello]) => {
          const t = window.chatTest;
          t.state = t.chat.createResponder({ identity: t.me, peerKey, conversation });
          const reply = await t.chat.onHello(t.state, hello);
          await t.put('handshake', t.state);
          return reply;
        }""",
        [python.public.b64, CONVERSATION, initiator.hello()],
    )
    confirm, session = initiator.on_reply(reply)
    load_module(page, node)
    step = page.evaluate(
        """async (confirm) => {
          const t = window.chatTest;
          const state = await t.get('handshake');
          t.session = await t.chat.onConfirm(state, confirm);
          return [state.step, t.session.role, t.session.th];
        }""",
        confirm,
    )
    assert step[:2] == ["done", "responder"]
    assert b64d(step[2]) == session.transcript_hash
    python_to_browser_and_back(page, session, node)


def test_invalid_browser_rejects_a_python_impostor(page: Page):
    registered = IdentityKey.generate()
    impostor = IdentityKey.generate()
    browser_key = browser_identity(page)
    forged = Initiator(impostor, browser_key, CONVERSATION).hello()
    forged_claiming = dict(forged, key=registered.public.b64)
    codes = page.evaluate(
        """async ([peerKey, conversation, hellos]) => {
          const t = window.chatTest;
          const codes = [];
          for (const hello of hellos) {
            const state = t.chat.createResponder({ identity: t.me, peerKey, conversation });
            codes.push(await t.caught(t.chat.onHello(state, hello)));
          }
          return codes;
        }""",
        [registered.public.b64, CONVERSATION, [forged, forged_claiming]],
    )
    assert codes == ["identity_mismatch", "bad_signature"]


def test_browser_device_changes_match_the_vectors(page: Page, vec):
    answers = page.evaluate(
        """async (cases) => {
          const { chat, caught } = window.chatTest;
          const out = [];
          for (const c of cases) {
            let answer;
            try {
              answer = chat.deviceChanges(c.known, c.current);
            } catch (error) {
              answer = error.name === 'ChatError' ? error.code : String(error);
            }
            out.push(answer);
          }
          return out;
        }""",
        vec["device_changes"],
    )
    assert answers == [case["expected"] for case in vec["device_changes"]]


def test_a_reset_between_python_and_the_browser_skips_and_duplicates_nothing(page: Page, node: Node):
    """Python and the browser hold a session; each seals messages that are still on their way
    when a new handshake replaces the session. After the reset (and a browser restart from
    IndexedDB) each side reads the other's late messages once, with the replaced session, and
    the new session's messages too; a second copy is a replay, an unknown session is named."""
    python = IdentityKey.generate()
    browser_key = browser_identity(page)

    def handshake_with_browser_responding() -> Session:
        initiator = Initiator(python, browser_key, CONVERSATION)
        reply = page.evaluate(
            """async ([peerKey, conversation, hello]) => {
              const t = window.chatTest;
              t.state = t.chat.createResponder({ identity: await t.get('identity'), peerKey, conversation });
              return t.chat.onHello(t.state, hello);
            }""",
            [python.public.b64, CONVERSATION, initiator.hello()],
        )
        confirm, session = initiator.on_reply(reply)
        page.evaluate(
            """async (confirm) => {
              const t = window.chatTest;
              const fresh = await t.chat.onConfirm(t.state, confirm);
              if (t.session) await t.chat.replaceSession(fresh, t.session);
              t.session = fresh;
              await t.put('session', t.session);
            }""",
            confirm,
        )
        return session

    old = handshake_with_browser_responding()
    late_to_browser = [old.seal(b"python, before the reset"), old.seal(b"python, also before")]
    late_to_python = browser_exchange(page, [], ["browser, before the reset"])["envelopes"]
    new = handshake_with_browser_responding()
    new.replaces(old)
    fresh = new.seal(b"python, after the reset")

    load_module(page, node)
    result = page.evaluate(
        """async (incoming) => {
          const t = window.chatTest;
          t.session = await t.get('session');
          const texts = [];
          for (const envelope of incoming) texts.push(await t.chat.openText(t.session, envelope));
          const again = await t.caught(t.chat.openMessage(t.session, incoming[0]));
          const stranger = { ...incoming[2], sid: 'AAAAAAAAAAAAAAAAAAAAAA' };
          const unknown = await t.caught(t.chat.openMessage(t.session, stranger));
          const reply = await t.chat.sealMessage(t.session, 'browser, after the reset');
          return { texts, again, unknown, reply, earlier: t.session.earlier.length, sid: t.session.sid };
        }""",
        [*late_to_browser, fresh],
    )
    assert result["texts"] == ["python, before the reset", "python, also before", "python, after the reset"]
    assert (result["again"], result["unknown"], result["earlier"]) == ("replayed", "other_session", 1)
    assert result["sid"] == new.sid == result["reply"]["sid"] != old.sid
    assert new.open(late_to_python[0]) == b"browser, before the reset"
    assert new.open(result["reply"]) == b"browser, after the reset"
    with pytest.raises(ReplayedMessage):
        new.open(late_to_python[0])
