"""The chat protocol (core.chat): Python against Python, every refusal, and the shared vectors.

tests/core/vectors/chat-v1.json is read here and, by tests/browser/test_chat_vectors.py,
in Chromium against pwa/chat-crypto.js. Everything in it follows from fixed private
scalars and nonces except the ECDSA signatures (randomised), which are recorded and
checked by verification. After a deliberate protocol change, regenerate it and review
the diff:

    .venv/bin/python -c "from tests.core.test_chat_protocol import write_vectors; write_vectors()"
"""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core.chat import Initiator, PublicIdentity, Responder, Session, UnknownSession, device_changes, key_change
from core.chat.handshake import confirmation, full_transcript, hello_transcript, key_schedule
from core.chat.identity import IdentityKey, load_point, private_from_scalar
from core.chat.wire import I2R, MAX_PLAINTEXT_BYTES, R2I, message_aad, message_nonce, session_id
from core.encoding import b64d, b64e
from core.errors import (
    ChatDecryptionError,
    ChatError,
    CoreError,
    DecryptionError,
    HandshakeSignatureError,
    IdentityKeyMismatch,
    InvalidSignature,
    KeyConfirmationError,
    MalformedChatMessage,
    ReorderedMessage,
    ReplayedMessage,
    SessionExhausted,
    UnexpectedHandshakeMessage,
    WrongConversation,
)

VECTORS = Path(__file__).parent / "vectors" / "chat-v1.json"
CONVERSATION = "42"
SCALARS = {
    "initiator": (bytes.fromhex("11" * 32), bytes.fromhex("21" * 32)),
    "responder": (bytes.fromhex("12" * 32), bytes.fromhex("22" * 32)),
    "mallory": (bytes.fromhex("13" * 32), bytes.fromhex("23" * 32)),
}
NONCES = {"initiator": bytes(range(32)), "responder": bytes(range(32, 64)), "mallory": bytes(range(64, 96))}
MESSAGES = [
    (I2R, "Hello, I have the same symptoms."),
    (R2I, "Zoë here \u2014 since when? \U0001f600"),
    (I2R, ""),
    (I2R, "A third message, sent before any answer."),
    (R2I, "x" * 300),
]
ERRORS: dict[str, type[ChatError]] = {
    cls.code: cls
    for cls in (
        MalformedChatMessage,
        WrongConversation,
        IdentityKeyMismatch,
        HandshakeSignatureError,
        KeyConfirmationError,
        UnexpectedHandshakeMessage,
        ReplayedMessage,
        ReorderedMessage,
        SessionExhausted,
        ChatDecryptionError,
        UnknownSession,
    )
}


def fixed_rng(*chunks: bytes) -> Callable[[int], bytes]:
    """An rng that hands out exactly these chunks, in order."""
    queue = list(chunks)

    def rng(size: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == size
        return chunk

    return rng


def identity(name: str) -> IdentityKey:
    return IdentityKey.from_scalar(SCALARS[name][0])


def side_rng(name: str) -> Callable[[int], bytes]:
    return fixed_rng(SCALARS[name][1], NONCES[name])


def pkcs8(scalar: bytes) -> str:
    der = private_from_scalar(scalar).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return b64e(der)


def side_inputs(name: str) -> dict[str, str]:
    eph = IdentityKey.from_scalar(SCALARS[name][1]).public
    return {
        "identity_scalar": SCALARS[name][0].hex(),
        "identity_pkcs8": pkcs8(SCALARS[name][0]),
        "key": identity(name).public.b64,
        "ephemeral_scalar": SCALARS[name][1].hex(),
        "ephemeral_pkcs8": pkcs8(SCALARS[name][1]),
        "eph": eph.b64,
        "nonce": b64e(NONCES[name]),
    }


def handshake(
    conversation: str = CONVERSATION, a: str = "initiator", b: str = "responder"
) -> tuple[Initiator, Responder, dict[str, Any], dict[str, Any], dict[str, Any], Session, Session]:
    """A complete deterministic handshake between two named fixed identities."""
    initiator = Initiator(identity(a), identity(b).public, conversation, side_rng(a))
    responder = Responder(identity(b), identity(a).public, conversation, side_rng(b))
    hello = initiator.hello()
    reply = responder.on_hello(hello)
    confirm, i_session = initiator.on_reply(reply)
    r_session = responder.on_confirm(confirm)
    return initiator, responder, hello, reply, confirm, i_session, r_session


def flip(text: str, index: int = 0) -> str:
    """Flip one bit of the decoded bytes of a base64url field."""
    data = bytearray(b64d(text))
    data[index] ^= 0x01
    return b64e(bytes(data))


def build_vectors() -> dict[str, Any]:
    """Everything in chat-v1.json; only the signatures differ from one run to the next."""
    _, _, hello, reply, confirm, i_session, r_session = handshake()
    keys = {name: identity(name).public.raw for name in SCALARS}
    eph = {name: IdentityKey.from_scalar(SCALARS[name][1]).public.raw for name in SCALARS}
    hello_bytes = hello_transcript(
        CONVERSATION, keys["initiator"], keys["responder"], eph["initiator"], NONCES["initiator"]
    )
    transcript = full_transcript(hello_bytes, eph["responder"], NONCES["responder"])
    th = hashlib.sha256(transcript).digest()
    shared = private_from_scalar(SCALARS["initiator"][1]).exchange(ec.ECDH(), load_point(eph["responder"]))
    schedule = key_schedule(shared, th)
    messages = []
    for direction, text in MESSAGES:
        sender = i_session if direction == I2R else r_session
        seq = sender.send_seq
        messages.append({
            "dir": direction,
            "seq": seq,
            "plaintext": text,
            "nonce": b64e(message_nonce(seq)),
            "aad": b64e(message_aad(CONVERSATION, session_id(th), direction, seq)),
            "envelope": sender.seal(text.encode("utf-8")),
        })  # fmt: skip
    return {
        "about": "Known answers for the chat protocol of docs/chat-protocol.md; see tests/core/test_chat_protocol.py.",
        "conversation": CONVERSATION,
        "initiator": side_inputs("initiator"),
        "responder": side_inputs("responder"),
        "mallory": side_inputs("mallory"),
        "hello": hello,
        "reply": reply,
        "confirm": confirm,
        "hello_transcript": b64e(hello_bytes),
        "transcript": b64e(transcript),
        "transcript_hash": b64e(th),
        "session_id": b64e(session_id(th)),
        "shared_secret": b64e(shared),
        "keys": {
            "i2r": b64e(schedule.i2r),
            "r2i": b64e(schedule.r2i),
            "confirm_i2r": b64e(schedule.confirm_i2r),
            "confirm_r2i": b64e(schedule.confirm_r2i),
        },
        "messages": messages,
        "negative": negative_vectors(hello, reply, confirm, messages, transcript),
        "device_changes": device_change_vectors(),
    }


def device_change_vectors() -> list[dict[str, Any]]:
    """Cases of the device rule: known and current devices (id -> fingerprint), and the answer
    (or "malformed")."""
    fp = {name: hashlib.sha256(name.encode()).hexdigest() for name in ("phone", "tablet", "laptop", "new")}
    phone, tablet, laptop = "cGhvbmUtZGV2aWNlLWlkMQ", "dGFibGV0LWRldmljZS1pZA", "bGFwdG9wLWRldmljZS1pZA"
    cases = [
        ("nothing known yet", {}, {phone: fp["phone"]}),
        ("same devices", {phone: fp["phone"], tablet: fp["tablet"]}, {tablet: fp["tablet"], phone: fp["phone"]}),
        ("a new device", {phone: fp["phone"]}, {phone: fp["phone"], laptop: fp["laptop"]}),
        ("a device removed", {phone: fp["phone"], tablet: fp["tablet"]}, {phone: fp["phone"]}),
        ("a device with a new key", {phone: fp["phone"]}, {phone: fp["new"]}),
        ("a key that took a device id", {"": fp["phone"]}, {phone: fp["phone"]}),
        ("all at once", {phone: fp["phone"], tablet: fp["tablet"]}, {phone: fp["new"], laptop: fp["laptop"]}),
        ("constructor is just a device id", {}, {"constructor": fp["new"]}),
    ]
    out: list[dict[str, Any]] = []
    for name, known, current in cases:
        changes = device_changes(known, current)
        answer = {"added": list(changes.added), "changed": list(changes.changed), "removed": list(changes.removed)}
        out.append({"name": name, "known": known, "current": current, "expected": answer})
    for name, known, current in (
        ("a fingerprint in capitals", {phone: fp["phone"].upper()}, {}),
        ("a device id too long", {}, {"x" * 23: fp["new"]}),
        ("a fingerprint that is not text", {}, {phone: 7}),
    ):
        out.append({"name": name, "known": known, "current": current, "expected": "malformed"})
    return out


def negative_vectors(
    hello: dict[str, Any],
    reply: dict[str, Any],
    confirm: dict[str, Any],
    messages: list[dict[str, Any]],
    transcript: bytes,
) -> list[dict[str, Any]]:
    """Each case: a step, optional messages accepted first ("before"), the bad message and the error code.

    step "hello": a fresh responder (peer key = "ledger_key" if given, else the initiator's);
    step "reply": the initiator after sending the vector hello; step "confirm": the responder
    after answering the vector hello; step "message": the session of the receiving side of
    direction "dir", after opening "before".
    """
    mallory = identity("mallory")
    initiator_key = identity("initiator").public
    responder_key = identity("responder").public
    i2r = [m["envelope"] for m in messages if m["dir"] == I2R]
    r2i = [m["envelope"] for m in messages if m["dir"] == R2I]

    def changed(message: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {**copy.deepcopy(message), **fields}

    mallory_hello = Initiator(mallory, responder_key, CONVERSATION, side_rng("mallory")).hello()
    misaddressed = Initiator(identity("initiator"), mallory.public, CONVERSATION, side_rng("initiator")).hello()
    pad = changed(hello, sig=hello["sig"])
    pad["pad"] = "x" * 5000
    off_curve = bytearray(b64d(hello["eph"]))
    off_curve[-1] ^= 0x01
    cases: list[dict[str, Any]] = [
        {"name": "hello with a corrupted signature", "message": changed(hello, sig=flip(hello["sig"], 40)),
         "error": "bad_signature"},
        {"name": "hello with a swapped ephemeral key", "message": changed(hello, eph=b64e(
            IdentityKey.from_scalar(SCALARS["mallory"][1]).public.raw)), "error": "bad_signature"},
        {"name": "hello with a changed nonce", "message": changed(hello, nonce=flip(hello["nonce"])),
         "error": "bad_signature"},
        {"name": "hello from another identity key than the ledger's", "message": mallory_hello,
         "error": "identity_mismatch"},
        {"name": "hello signed by another key claiming the initiator's", "message": changed(
            mallory_hello, key=initiator_key.b64), "error": "bad_signature"},
        {"name": "ledger holds another key for the initiator", "message": hello, "ledger_key": mallory.public.b64,
         "error": "identity_mismatch"},
        {"name": "hello addressed to another identity key", "message": misaddressed, "error": "identity_mismatch"},
        {"name": "hello for another conversation", "message": changed(hello, conversation="43"),
         "error": "wrong_conversation"},
        {"name": "hello of another version", "message": changed(hello, v=2), "error": "malformed"},
        {"name": "hello with an unknown type", "message": changed(hello, type="hullo"), "error": "malformed"},
        {"name": "hello with a missing field", "message": {k: v for k, v in hello.items() if k != "nonce"},
         "error": "malformed"},
        {"name": "hello over 4 KiB", "message": pad, "error": "malformed"},
        {"name": "hello with padded base64", "message": changed(hello, nonce=hello["nonce"] + "="),
         "error": "malformed"},
        {"name": "hello with a short nonce", "message": changed(hello, nonce=b64e(NONCES["initiator"][:31])),
         "error": "malformed"},
        {"name": "hello with an ephemeral key off the curve", "message": changed(hello, eph=b64e(bytes(off_curve))),
         "error": "malformed"},
        {"name": "confirm sent instead of a hello", "message": confirm, "error": "unexpected_message"},
        {"name": "replayed hello", "before": [hello], "message": hello, "error": "unexpected_message"},
        {"name": "reply with a corrupted signature", "step": "reply", "message": changed(reply, sig=flip(reply["sig"])),
         "error": "bad_signature"},
        {"name": "reply with a corrupted confirmation", "step": "reply", "message": changed(
            reply, mac=flip(reply["mac"], 31)), "error": "confirmation_failed"},
        {"name": "reply with a swapped ephemeral key", "step": "reply", "message": changed(
            reply, eph=hello["eph"]), "error": "bad_signature"},
        {"name": "reply from another identity key than the ledger's", "step": "reply", "message": changed(
            reply, key=mallory.public.b64), "error": "identity_mismatch"},
        {"name": "reply signed by another key claiming the responder's", "step": "reply", "message": changed(
            reply, sig=b64e(mallory.sign(transcript))), "error": "bad_signature"},
        {"name": "reply for another conversation", "step": "reply", "message": changed(reply, conversation="43"),
         "error": "wrong_conversation"},
        {"name": "reply with an extra field", "step": "reply", "message": changed(reply, extra=1),
         "error": "malformed"},
        {"name": "replayed reply", "step": "reply", "before": [reply], "message": reply,
         "error": "unexpected_message"},
        {"name": "confirm with a corrupted MAC", "step": "confirm", "message": changed(
            confirm, mac=flip(confirm["mac"], 5)), "error": "confirmation_failed"},
        {"name": "confirm carrying the responder's own MAC", "step": "confirm", "message": changed(
            confirm, mac=reply["mac"]), "error": "confirmation_failed"},
        {"name": "confirm for another conversation", "step": "confirm", "message": changed(
            confirm, conversation="43"), "error": "wrong_conversation"},
        {"name": "replayed confirm", "step": "confirm", "before": [confirm], "message": confirm,
         "error": "unexpected_message"},
        {"name": "tampered ciphertext", "step": "message", "dir": I2R, "message": changed(
            i2r[0], ct=flip(i2r[0]["ct"], 3)), "error": "decryption_failed"},
        {"name": "tampered tag", "step": "message", "dir": I2R, "message": changed(
            i2r[0], ct=flip(i2r[0]["ct"], len(b64d(i2r[0]["ct"])) - 1)), "error": "decryption_failed"},
        {"name": "replayed message", "step": "message", "dir": I2R, "before": [i2r[0]], "message": i2r[0],
         "error": "replayed"},
        {"name": "reordered message", "step": "message", "dir": I2R, "message": i2r[1], "error": "out_of_order"},
        {"name": "skipped message", "step": "message", "dir": I2R, "before": [i2r[0]], "message": i2r[2],
         "error": "out_of_order"},
        {"name": "counter relabelled", "step": "message", "dir": I2R, "message": changed(i2r[1], seq=0),
         "error": "decryption_failed"},
        {"name": "message reflected back to its sender", "step": "message", "dir": R2I, "message": i2r[0],
         "error": "decryption_failed"},
        {"name": "message of the other direction", "step": "message", "dir": I2R, "message": r2i[0],
         "error": "decryption_failed"},
        {"name": "negative counter", "step": "message", "dir": I2R, "message": changed(i2r[0], seq=-1),
         "error": "malformed"},
        {"name": "counter as text", "step": "message", "dir": I2R, "message": changed(i2r[0], seq="0"),
         "error": "malformed"},
        {"name": "ciphertext shorter than a tag", "step": "message", "dir": I2R, "message": changed(
            i2r[0], ct=b64e(bytes(15))), "error": "malformed"},
        {"name": "envelope of another version", "step": "message", "dir": I2R, "message": changed(i2r[0], v=2),
         "error": "malformed"},
        {"name": "envelope of another session", "step": "message", "dir": I2R, "message": changed(
            i2r[0], sid=flip(i2r[0]["sid"], 15)), "error": "other_session"},
        {"name": "envelope without a session id", "step": "message", "dir": I2R, "message": {
            k: v for k, v in i2r[0].items() if k != "sid"}, "error": "malformed"},
        {"name": "session id of the wrong length", "step": "message", "dir": I2R, "message": changed(
            i2r[0], sid=b64e(bytes(15))), "error": "malformed"},
    ]  # fmt: skip
    return [{"step": "hello", "before": [], **case} for case in cases]


def write_vectors() -> None:
    VECTORS.write_text(json.dumps(build_vectors(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- running vectors


@pytest.fixture(scope="module")
def vec() -> dict[str, Any]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def without_sig(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if k != "sig"}


def vector_initiator(vec: dict[str, Any]) -> Initiator:
    """The initiator after sending the vector hello (same fields; only its fresh signature differs)."""
    initiator = Initiator(identity("initiator"), PublicIdentity.from_b64(vec["responder"]["key"]), vec["conversation"],
                          side_rng("initiator"))  # fmt: skip
    assert without_sig(initiator.hello()) == without_sig(vec["hello"])
    return initiator


def vector_responder(vec: dict[str, Any], ledger_key: str | None = None) -> Responder:
    peer = PublicIdentity.from_b64(ledger_key or vec["initiator"]["key"])
    return Responder(identity("responder"), peer, vec["conversation"], side_rng("responder"))


def vector_sessions(vec: dict[str, Any]) -> dict[str, Session]:
    """Both sessions, from the vector messages (receiver side keyed by the direction it receives)."""
    initiator = vector_initiator(vec)
    responder = vector_responder(vec)
    responder.on_hello(vec["hello"])
    _, i_session = initiator.on_reply(vec["reply"])
    r_session = responder.on_confirm(vec["confirm"])
    return {R2I: i_session, I2R: r_session}


def run_negative(vec: dict[str, Any], case: dict[str, Any]) -> None:
    """Feed case["before"] then case["message"] to the side named by the case; raises what it raises."""
    step = case["step"]
    if step == "hello":
        responder = vector_responder(vec, case.get("ledger_key"))
        for message in case["before"]:
            responder.on_hello(message)
        responder.on_hello(case["message"])
    elif step == "reply":
        initiator = vector_initiator(vec)
        for message in case["before"]:
            initiator.on_reply(message)
        initiator.on_reply(case["message"])
    elif step == "confirm":
        responder = vector_responder(vec)
        responder.on_hello(vec["hello"])
        for message in case["before"]:
            responder.on_confirm(message)
        responder.on_confirm(case["message"])
    else:
        session = vector_sessions(vec)[case["dir"]]
        for envelope in case["before"]:
            session.open(envelope)
        session.open(case["message"])


def test_vectors_match_a_fresh_build(vec):
    fresh = build_vectors()
    for name in ("conversation", "initiator", "responder", "mallory", "hello_transcript", "transcript",
                 "transcript_hash", "shared_secret", "keys", "messages"):  # fmt: skip
        assert fresh[name] == vec[name], name
    for name in ("hello", "reply"):
        assert without_sig(fresh[name]) == without_sig(vec[name])
    assert fresh["confirm"] == vec["confirm"]
    assert [c["name"] for c in fresh["negative"]] == [c["name"] for c in vec["negative"]]


def test_vector_signatures_verify(vec):
    initiator = PublicIdentity.from_b64(vec["initiator"]["key"])
    responder = PublicIdentity.from_b64(vec["responder"]["key"])
    initiator.verify(b64d(vec["hello"]["sig"]), b64d(vec["hello_transcript"]), "hello")
    responder.verify(b64d(vec["reply"]["sig"]), b64d(vec["transcript"]), "reply")
    with pytest.raises(HandshakeSignatureError):
        responder.verify(b64d(vec["hello"]["sig"]), b64d(vec["hello_transcript"]), "hello")


def test_vector_key_schedule(vec):
    th = b64d(vec["transcript_hash"])
    assert hashlib.sha256(b64d(vec["transcript"])).digest() == th
    assert b64d(vec["transcript"]).startswith(b64d(vec["hello_transcript"]))
    keys = key_schedule(b64d(vec["shared_secret"]), th)
    assert b64e(keys.i2r) == vec["keys"]["i2r"]
    assert b64e(keys.confirm_r2i) == vec["keys"]["confirm_r2i"]
    assert b64e(confirmation(keys.confirm_r2i, R2I, th)) == vec["reply"]["mac"]
    assert b64e(confirmation(keys.confirm_i2r, I2R, th)) == vec["confirm"]["mac"]
    assert len({keys.i2r, keys.r2i, keys.confirm_i2r, keys.confirm_r2i}) == 4


def test_vector_handshake_replays_with_python(vec):
    responder = vector_responder(vec)
    reply = responder.on_hello(vec["hello"])
    assert without_sig(reply) == without_sig(vec["reply"])
    PublicIdentity.from_b64(vec["responder"]["key"]).verify(b64d(reply["sig"]), b64d(vec["transcript"]), "reply")
    confirm, session = vector_initiator(vec).on_reply(vec["reply"])
    assert confirm == vec["confirm"]
    assert session.transcript_hash == b64d(vec["transcript_hash"])
    assert responder.on_confirm(vec["confirm"]).transcript_hash == session.transcript_hash


def test_vector_messages(vec):
    sessions = vector_sessions(vec)
    senders = {I2R: sessions[R2I], R2I: sessions[I2R]}
    for message in vec["messages"]:
        assert senders[message["dir"]].seal(message["plaintext"].encode()) == message["envelope"]
        assert sessions[message["dir"]].open(message["envelope"]).decode() == message["plaintext"]
        assert message_nonce(message["seq"]) == b64d(message["nonce"])
        sid = b64d(vec["session_id"])
        assert message["envelope"]["sid"] == vec["session_id"]
        assert message_aad(vec["conversation"], sid, message["dir"], message["seq"]) == b64d(message["aad"])


def test_vector_negative_cases_cover_every_handshake_error(vec):
    codes = {case["error"] for case in vec["negative"]}
    assert codes == set(ERRORS) - {"exhausted"}


def stored_negative_cases() -> list[dict[str, Any]]:
    return json.loads(VECTORS.read_text(encoding="utf-8"))["negative"] if VECTORS.exists() else []


@pytest.mark.parametrize("case", stored_negative_cases(), ids=lambda case: case["name"])
def test_invalid_vector(vec, case):
    with pytest.raises(ERRORS[case["error"]]) as caught:
        run_negative(vec, case)
    assert caught.value.code == case["error"]


# ---- Python against Python, fresh keys


@pytest.fixture
def pair() -> Iterator[tuple[Session, Session]]:
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    initiator = Initiator(alice, bob.public, "c-1")
    responder = Responder(bob, alice.public, "c-1")
    reply = responder.on_hello(initiator.hello())
    confirm, a = initiator.on_reply(reply)
    yield a, responder.on_confirm(confirm)


def test_full_handshake_and_messages_both_ways(pair):
    a, b = pair
    assert a.transcript_hash == b.transcript_hash
    assert (a.role, b.role) == ("initiator", "responder")
    for i in range(5):
        assert b.open(a.seal(f"a{i}".encode())) == f"a{i}".encode()
        assert a.open(b.seal(f"b{i}".encode())) == f"b{i}".encode()
    first, second = a.seal(b"one"), a.seal(b"two")
    assert (first["seq"], second["seq"]) == (5, 6)
    assert b.open(first) == b"one" and b.open(second) == b"two"
    assert (a.send_seq, b.recv_seq, b.send_seq, a.recv_seq) == (7, 7, 5, 5)


def test_handshake_messages_are_small_and_typed(vec):
    for name in ("hello", "reply", "confirm"):
        assert vec[name]["type"] == name and vec[name]["v"] == 1
        assert len(json.dumps(vec[name], separators=(",", ":")).encode()) <= 4096


def test_same_plaintext_gives_different_ciphertexts(pair):
    a, _ = pair
    assert a.seal(b"same")["ct"] != a.seal(b"same")["ct"]


def test_fresh_handshakes_give_fresh_keys():
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    hashes = set()
    for _ in range(2):
        initiator = Initiator(alice, bob.public, "c")
        responder = Responder(bob, alice.public, "c")
        _, session = initiator.on_reply(responder.on_hello(initiator.hello()))
        hashes.add(session.transcript_hash)
    assert len(hashes) == 2


def test_hello_is_stable_for_resending():
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    initiator = Initiator(alice, bob.public, "c")
    assert initiator.hello() == initiator.hello()


def test_rejected_message_leaves_handshake_waiting(vec):
    responder = vector_responder(vec)
    bad = {**vec["hello"], "sig": flip(vec["hello"]["sig"], 40)}
    with pytest.raises(HandshakeSignatureError):
        responder.on_hello(bad)
    responder.on_hello(vec["hello"])
    with pytest.raises(KeyConfirmationError):
        responder.on_confirm({**vec["confirm"], "mac": flip(vec["confirm"]["mac"])})
    assert responder.on_confirm(vec["confirm"]).recv_seq == 0


def test_rejected_envelope_does_not_move_the_counter(pair):
    a, b = pair
    good = a.seal(b"hi")
    with pytest.raises(ChatDecryptionError):
        b.open({**good, "ct": flip(good["ct"])})
    assert b.recv_seq == 0
    assert b.open(good) == b"hi"


def test_invalid_reply_before_hello():
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with pytest.raises(UnexpectedHandshakeMessage, match="before the hello"):
        Initiator(alice, bob.public, "c").on_reply({})


def test_invalid_confirm_before_hello():
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with pytest.raises(UnexpectedHandshakeMessage, match="before any hello"):
        Responder(bob, alice.public, "c").on_confirm({})


@pytest.mark.parametrize("message", [None, [], "hello", {"type": "hello"}, {"type": "hello", "v": 1}])
def test_invalid_handshake_shapes(vec, message):
    with pytest.raises(MalformedChatMessage):
        vector_responder(vec).on_hello(message)


@pytest.mark.parametrize("conversation", ["", "x" * 129, 42])
def test_invalid_conversation_id(conversation):
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    with pytest.raises(MalformedChatMessage, match="conversation id"):
        Initiator(alice, bob.public, conversation)


@pytest.mark.parametrize(
    "text",
    ["", "AAAA", b64e(b"\x04" + bytes(64)), b64e(b"\x02" + bytes(32)), "not base64!", b64e(b"\x04" + bytes(63)) + "="],
)
def test_invalid_public_identity(text):
    with pytest.raises(MalformedChatMessage):
        PublicIdentity.from_b64(text)


def test_invalid_plaintext_too_large(pair):
    a, _ = pair
    with pytest.raises(MalformedChatMessage, match="at most"):
        a.seal(bytes(MAX_PLAINTEXT_BYTES + 1))
    assert a.send_seq == 0


def test_invalid_seal_after_counter_limit(pair):
    a, _ = pair
    a.send_seq = 2**32
    with pytest.raises(SessionExhausted):
        a.seal(b"late")


def test_errors_share_the_core_roots():
    assert issubclass(ChatDecryptionError, DecryptionError)
    assert issubclass(HandshakeSignatureError, InvalidSignature)
    assert all(issubclass(cls, CoreError) for cls in ERRORS.values())
    assert str(ChatDecryptionError()) == "decryption failed"


# ---- export / import


def test_session_survives_export_and_import(pair):
    a, b = pair
    storage = bytes(range(32))
    b.open(a.seal(b"before"))
    saved = json.loads(json.dumps(b.to_dict(storage)))
    restored = Session.from_dict(saved, storage)
    assert restored.open(a.seal(b"after")) == b"after"
    assert a.open(restored.seal(b"back")) == b"back"
    assert (restored.conversation, restored.role, restored.peer) == (b.conversation, b.role, b.peer)


def test_export_hides_the_keys(pair):
    a, _ = pair
    text = json.dumps(a.to_dict(bytes(32)))
    for secret in a._keys:
        assert b64e(secret) not in text and secret.hex() not in text
    assert "secret" in repr(a)


def test_invalid_import_with_wrong_storage_key(pair):
    a, _ = pair
    with pytest.raises(DecryptionError):
        Session.from_dict(a.to_dict(bytes(32)), bytes([1]) * 32)


def test_invalid_import_with_rolled_back_counter(pair):
    a, b = pair
    b.open(a.seal(b"one"))
    saved = b.to_dict(bytes(32))
    saved["recv_seq"] = 0  # would let the first message be replayed
    with pytest.raises(DecryptionError):
        Session.from_dict(saved, bytes(32))


@pytest.mark.parametrize("field", ["type", "sealed", "role"])
def test_invalid_import_shapes(pair, field):
    a, _ = pair
    saved = a.to_dict(bytes(32))
    saved[field] = 7
    with pytest.raises((MalformedChatMessage, DecryptionError)):
        Session.from_dict(saved, bytes(32))


def test_secrets_refuse_to_be_pickled_or_printed(pair):
    a, _ = pair
    key = IdentityKey.generate()
    for secret in (a, key):
        with pytest.raises(TypeError):
            pickle.dumps(secret)
        with pytest.raises(TypeError):
            hash(secret)
    assert "secret" in repr(key) and "secret" in str(a)


def test_fingerprint_is_sha256_of_the_point():
    key = IdentityKey.generate().public
    assert key.fingerprint == hashlib.sha256(key.raw).hexdigest()
    assert PublicIdentity.from_b64(key.b64) == key


def test_changed_key_rule():
    old, new = IdentityKey.generate().public, IdentityKey.generate().public
    assert key_change(None, old) == "first"
    assert key_change(old, PublicIdentity.from_b64(old.b64)) == "same"
    assert key_change(old, new) == "changed"


def test_handshake_survives_restarts_on_both_sides():
    alice, bob = IdentityKey.generate(), IdentityKey.generate()
    storage_a, storage_b = bytes([7]) * 32, bytes([9]) * 32
    initiator = Initiator(alice, bob.public, "c-9")
    hello = initiator.hello()
    saved_initiator = json.loads(json.dumps(initiator.to_dict(storage_a)))
    responder = Responder(bob, alice.public, "c-9")
    reply = responder.on_hello(hello)
    saved_responder = json.loads(json.dumps(responder.to_dict(storage_b)))

    initiator = Initiator.from_dict(saved_initiator, alice, storage_a)
    assert initiator.hello() == hello
    confirm, a = initiator.on_reply(reply)
    b = Responder.from_dict(saved_responder, bob, storage_b).on_confirm(confirm)
    assert a.transcript_hash == b.transcript_hash
    assert b.open(a.seal(b"resumed")) == b"resumed"
    assert a.open(b.seal(b"resumed too")) == b"resumed too"


def test_saved_handshake_hides_its_secrets(vec):
    initiator = vector_initiator(vec)
    text = json.dumps(initiator.to_dict(bytes(32)))
    assert SCALARS["initiator"][1].hex() not in text and b64e(SCALARS["initiator"][1]) not in text
    responder = vector_responder(vec)
    responder.on_hello(vec["hello"])
    text = json.dumps(responder.to_dict(bytes(32)))
    assert all(key not in text for key in vec["keys"].values())


def test_invalid_saved_handshake(vec):
    initiator = vector_initiator(vec)
    saved = initiator.to_dict(bytes(32))
    with pytest.raises(DecryptionError):
        Initiator.from_dict(saved, identity("initiator"), bytes([1]) * 32)
    with pytest.raises(DecryptionError):
        Initiator.from_dict({**saved, "peer": identity("mallory").public.b64}, identity("initiator"), bytes(32))
    with pytest.raises(IdentityKeyMismatch):
        Initiator.from_dict(saved, identity("mallory"), bytes(32))
    with pytest.raises(MalformedChatMessage):
        Responder.from_dict(saved, identity("initiator"), bytes(32))
    with pytest.raises(UnexpectedHandshakeMessage):
        vector_responder(vec).to_dict(bytes(32))
    initiator.on_reply(vec["reply"])
    with pytest.raises(UnexpectedHandshakeMessage):
        initiator.to_dict(bytes(32))


# ---- session ids: a reset neither skips nor duplicates a message


def reset(a: Session, b: Session, initiator_side: str = "b") -> tuple[Session, Session]:
    """A new handshake between the owners of `a` and `b` (either side may start it); the new
    sessions replace the old ones. Returns the new (a, b)."""
    own = {"a": (a.own, b.own), "b": (b.own, a.own)}[initiator_side]
    keys = {a.own: ALICE_BOB[0], b.own: ALICE_BOB[1]}
    initiator = Initiator(keys[own[0]], own[1], a.conversation)
    responder = Responder(keys[own[1]], own[0], a.conversation)
    confirm, first = initiator.on_reply(responder.on_hello(initiator.hello()))
    second = responder.on_confirm(confirm)
    new = {own[0]: first, own[1]: second}
    new_a, new_b = new[a.own], new[b.own]
    new_a.replaces(a)
    new_b.replaces(b)
    return new_a, new_b


ALICE_BOB = (IdentityKey.generate(), IdentityKey.generate())


@pytest.fixture
def alice_bob() -> tuple[Session, Session]:
    alice, bob = ALICE_BOB
    initiator = Initiator(alice, bob.public, "c-2")
    responder = Responder(bob, alice.public, "c-2")
    confirm, a = initiator.on_reply(responder.on_hello(initiator.hello()))
    return a, responder.on_confirm(confirm)


def test_both_sides_name_the_session_alike_and_every_handshake_anew(alice_bob):
    a, b = alice_bob
    assert a.id == b.id == session_id(a.transcript_hash) and len(a.id) == 16
    envelope = a.seal(b"hi")
    assert envelope["sid"] == a.sid == b64e(a.id)
    new_a, new_b = reset(a, b)
    assert new_a.id == new_b.id != a.id


def test_message_sealed_before_a_reset_is_read_once_and_not_skipped(alice_bob):
    a, b = alice_bob
    assert b.open(a.seal(b"one")) == b"one"
    late = [a.seal(b"two"), a.seal(b"three")]  # sealed, still on their way when b resets
    new_a, new_b = reset(a, b, initiator_side="b")
    fresh = new_a.seal(b"four")
    assert [new_b.open(e) for e in late] == [b"two", b"three"]
    assert new_b.open(fresh) == b"four"
    for again in (*late, fresh):
        with pytest.raises(ReplayedMessage):
            new_b.open(again)
    assert new_a.open(new_b.seal(b"back")) == b"back"


def test_late_messages_of_an_earlier_session_keep_their_own_order(alice_bob):
    a, b = alice_bob
    late = [a.seal(b"x"), a.seal(b"y")]
    new_a, new_b = reset(a, b)
    with pytest.raises(ReorderedMessage):
        new_b.open(late[1])
    assert new_b.open(new_a.seal(b"new")) == b"new"  # the new session does not wait for the old one
    assert [new_b.open(e) for e in late] == [b"x", b"y"]


def test_invalid_envelope_of_an_unknown_session_moves_no_counter(alice_bob, pair):
    a, b = alice_bob
    stranger, _ = pair
    envelope = dict(stranger.seal(b"elsewhere"), seq=0)
    with pytest.raises(UnknownSession) as caught:
        b.open(envelope)
    assert caught.value.code == "other_session"
    assert b.recv_seq == 0 and b.open(a.seal(b"ok")) == b"ok"


def test_only_the_last_four_sessions_are_kept(alice_bob):
    a, b = alice_bob
    late = [a.seal(b"late"), a.seal(b"too late")]
    for _ in range(4):
        a, b = reset(a, b)
    assert len(b.earlier) == 4
    assert b.open(late[0]) == b"late"
    a, b = reset(a, b)
    assert len(b.earlier) == 4
    with pytest.raises(UnknownSession):
        b.open(late[1])


def test_invalid_replace_by_another_conversation_or_itself(alice_bob, pair):
    a, _ = alice_bob
    other, _ = pair
    with pytest.raises(MalformedChatMessage):
        a.replaces(other)
    with pytest.raises(MalformedChatMessage):
        a.replaces(a)


def test_earlier_sessions_survive_export_and_refuse_a_rolled_back_counter(alice_bob):
    a, b = alice_bob
    late = [a.seal(b"l1"), a.seal(b"l2")]
    new_a, new_b = reset(a, b)
    assert new_b.open(late[0]) == b"l1"
    storage = bytes(range(32))
    saved = json.loads(json.dumps(new_b.to_dict(storage)))
    assert [e["recv_seq"] for e in saved["earlier"]] == [1]
    restored = Session.from_dict(saved, storage)
    assert restored.open(late[1]) == b"l2"
    assert restored.open(new_a.seal(b"n")) == b"n"
    saved["earlier"][0]["recv_seq"] = 0  # would let l1 be read twice
    with pytest.raises(DecryptionError):
        Session.from_dict(saved, storage)
    saved["earlier"] = "none"
    with pytest.raises(MalformedChatMessage):
        Session.from_dict(saved, storage)


class Relay:
    """The node's part in this: it stores an envelope once per client message id (cid)."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []

    def send(self, cid: str, envelope: dict[str, Any]) -> bool:
        if cid in self.stored:
            return False
        self.stored[cid] = envelope
        self.order.append(cid)
        return True


def deliver_outbox(session: Session, relay: Relay, outbox: list[dict[str, Any]]) -> None:
    """The app's rule (docs/chat-protocol.md, "Across a session reset"): an item sealed under a
    replaced session is first asked for by its cid; only one the node does not hold is sealed
    again, under the current session, keeping its cid."""
    for item in outbox:
        if item["envelope"]["sid"] != session.sid and item["cid"] in relay.stored:
            continue
        if item["envelope"]["sid"] != session.sid:
            item["envelope"] = session.seal(item["text"])
        relay.send(item["cid"], item["envelope"])


@pytest.mark.parametrize("stored_before_reset", [0, 1, 2])
def test_outbox_across_a_reset_reaches_the_peer_exactly_once(alice_bob, stored_before_reset):
    a, b = alice_bob
    relay = Relay()
    outbox = [{"cid": f"m{i}", "text": f"message {i}".encode()} for i in range(3)]
    for item in outbox:
        item["envelope"] = a.seal(item["text"])
    for item in outbox[:stored_before_reset]:  # reached the node, but the answer was lost
        relay.send(item["cid"], item["envelope"])
    new_a, new_b = reset(a, b)
    deliver_outbox(new_a, relay, outbox)
    deliver_outbox(new_a, relay, outbox)  # sent again after another lost answer: nothing new
    read = [new_b.open(relay.stored[cid]) for cid in relay.order]
    assert read == [item["text"] for item in outbox]


# ---- a peer's devices


def test_vector_device_changes(vec):
    assert len(vec["device_changes"]) == 11
    for case in vec["device_changes"]:
        if case["expected"] == "malformed":
            with pytest.raises(MalformedChatMessage):
                device_changes(case["known"], case["current"])
            continue
        changes = device_changes(case["known"], case["current"])
        answer = {"added": list(changes.added), "changed": list(changes.changed), "removed": list(changes.removed)}
        assert answer == case["expected"], case["name"]


def test_device_changes_name_the_notice_the_warning_and_the_revocation(vec):
    cases = {case["name"]: case["expected"] for case in vec["device_changes"]}
    assert cases["a new device"] == {"added": ["bGFwdG9wLWRldmljZS1pZA"], "changed": [], "removed": []}
    assert cases["a device removed"] == {"added": [], "changed": [], "removed": ["dGFibGV0LWRldmljZS1pZA"]}
    assert cases["a device with a new key"] == {"added": [], "changed": ["cGhvbmUtZGV2aWNlLWlkMQ"], "removed": []}
    assert cases["a key that took a device id"] == {"added": [], "changed": [], "removed": []}
    assert cases["same devices"] == cases["a key that took a device id"]
