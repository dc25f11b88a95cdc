"""API for symptom matching and chat (patients only; see docs/api.md "Matching and chat")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from apiflask import Schema
from apiflask.fields import Boolean, Float, Integer, List, Nested, String
from apiflask.validators import Length, OneOf, Range
from marshmallow import pre_load

from core import matching as core_matching
from portal import models, runtime
from portal.api import api_actor, bp, iso
from portal.api.schemas import Flag, Page, Paged, QueryWhole, Text, answer, listed
from portal.extensions import db
from portal.models import utcnow
from portal.openapi import BEARER
from portal.services import chat, ledger, matching, paging

MAX_QUERY = 100
MAX_KEY = 100  # a P-256 point in base64url is 87 characters; the service refuses longer ones too

# Today's wording of each refusal (tests and clients rely on them); the services say the same.
TERMS = f"`terms` must be a list of 1-{matching.MAX_TERMS} HPO term ids."
DIAGNOSIS = "`diagnosis` must be an ICD-10-CM code or null."
AGE_BAND = f"`age_band` must be null or one of {', '.join(core_matching.AGE_BANDS)}."
SEX = f"`sex` must be null or one of {', '.join(core_matching.SEXES)}."
DISCOVERABLE = "`discoverable` must be true or false."
QUERY = f"`q` is longer than {MAX_QUERY} characters."
SYMPTOM_LIMIT = "`limit` must be a whole number from 1 to 50."
MODE = "`mode` must be exact or ranked."
THRESHOLD = "`threshold` must be a number from 0 to 1."
PSEUDONYM = "`pseudonym` must be a patient's pseudonym."
KEY = "`key` must be a P-256 public key: the 65-byte uncompressed point in base64url."
DEVICE = "`device` must be a device id: 16 random bytes in base64url."


def _says(message: str, *, null: bool = True) -> dict[str, str]:
    """One message for every way a field can be wrong (missing, wrong type, null)."""
    return {"required": message, "invalid": message, **({"null": message} if null else {})}


# -- shapes ---------------------------------------------------------------------------------


class Moment(String):
    """A stored UTC time as the API writes every time: ISO 8601 with a Z."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(metadata={"format": "date-time", **kwargs.pop("metadata", {})}, **kwargs)

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return iso(value)


class BlockHeight(Integer):
    """The height of the block holding a transaction (dumped from its hash); null while pending."""

    def _serialize(self, value: str | None, attr: str | None, obj: Any, **kwargs: Any) -> int | None:
        return ledger.block_height_of(value) if value is not None else None


class _BlankIsAbsent(Schema):
    """Query parameters sent empty (`limit=`) count as not sent, as they always have."""

    BLANK_IS_ABSENT: tuple[str, ...] = ()

    @pre_load
    def _drop_blanks(self, data: Any, **kwargs: Any) -> Any:
        return {k: data[k] for k in data if not (k in self.BLANK_IS_ABSENT and data[k] == "")}


class SymptomQuery(_BlankIsAbsent):
    BLANK_IS_ABSENT = ("limit",)

    q = Text(
        load_default="",
        validate=Length(max=MAX_QUERY, error=QUERY),
        metadata={
            "description": "Words as typed: each must start a word of the symptom's name or of an everyday phrase "
            "for it (`short of breath` finds Dyspnea); an HPO id finds its term.",
            "example": "short of breath",
        },
    )
    limit = QueryWhole(1, 50, load_default=20, metadata={"example": 20, "description": "How many (20 if absent)."})


class DiagnosisQuery(_BlankIsAbsent):
    BLANK_IS_ABSENT = ("limit",)

    q = Text(
        load_default="",
        validate=Length(max=MAX_QUERY, error=QUERY),
        metadata={
            "description": "An ICD-10-CM code or its start, with or without the dot, or words of the description.",
            "example": "asthma",
        },
    )
    limit = QueryWhole(1, 50, load_default=20, metadata={"example": 20, "description": "How many (20 if absent)."})


class MatchQuery(_BlankIsAbsent):
    BLANK_IS_ABSENT = ("threshold",)

    mode = Text(
        load_default="exact",
        validate=OneOf(matching.MODES, error=MODE),
        error_messages={"invalid": MODE},
        metadata={"description": "`exact`: the same symptom set; `ranked`: similar profiles, best first."},
    )
    threshold = Float(
        validate=Range(0, 1, error=THRESHOLD),
        error_messages={"invalid": THRESHOLD, "special": THRESHOLD},
        metadata={
            "description": "Ranked mode's lowest similarity; one below the node's floor is raised to it.",
            "example": 0.5,
        },
    )


class HpoTerm(Schema):
    """A symptom: an HPO phenotype term."""

    id = String(required=True, metadata={"example": "HP:0002315"})
    name = String(required=True, metadata={"example": "Headache"})


class IcdDiagnosis(Schema):
    code = String(required=True, metadata={"example": "J45.909"})
    description = String(required=True, metadata={"example": "Unspecified asthma, uncomplicated"})


class SymptomHit(HpoTerm):
    """A symptom found by search, and the everyday phrase that found it."""

    matched = String(
        required=True,
        allow_none=True,
        metadata={"description": "The everyday phrase that matched; null when the name did.", "example": None},
    )


class SymptomList(Schema):
    symptoms = List(Nested(SymptomHit), required=True, metadata={"description": "Best first; [] when none."})


class DiagnosisList(Schema):
    diagnoses = List(Nested(IcdDiagnosis), required=True, metadata={"description": "Best first; [] when none."})


class SymptomProfileInput(Schema):
    terms = List(
        Text(error_messages={"invalid": TERMS}),
        required=True,
        validate=Length(1, matching.MAX_TERMS, error=TERMS),
        error_messages=_says(TERMS),
        metadata={"description": "HPO phenotype term ids.", "example": ["HP:0002315", "HP:0002018"]},
    )
    diagnosis = Text(
        load_default=None, allow_none=True, error_messages=_says(DIAGNOSIS, null=False), metadata={"example": "G43.909"}
    )
    age_band = Text(
        load_default=None,
        allow_none=True,
        validate=OneOf(core_matching.AGE_BANDS, error=AGE_BAND),
        error_messages=_says(AGE_BAND, null=False),
    )
    sex = Text(
        load_default=None,
        allow_none=True,
        validate=OneOf(core_matching.SEXES, error=SEX),
        error_messages=_says(SEX, null=False),
    )
    discoverable = Flag(
        load_default=False,
        error_messages=_says(DISCOVERABLE),
        metadata={"description": "May other patients find this profile (and so may its owner see matches)?"},
    )


class SymptomProfile(Schema):
    """A patient's own symptom profile (dumped from `matching.ProfileView`)."""

    terms = List(Nested(HpoTerm), required=True, metadata={"description": "Sorted by id."})
    diagnosis = Nested(IcdDiagnosis, required=True, allow_none=True)
    age_band = String(required=True, allow_none=True, validate=OneOf(core_matching.AGE_BANDS))
    sex = String(required=True, allow_none=True, validate=OneOf(core_matching.SEXES))
    discoverable = Boolean(required=True)


class SymptomProfileAnswer(Schema):
    profile = Nested(SymptomProfile, required=True, allow_none=True, metadata={"description": "null without one."})


class ConnectionState(Schema):
    id = String(required=True)
    state = String(required=True, validate=OneOf(("pending", "accepted", "declined")))


class Match(Schema):
    """Another patient as a match shows them: a pseudonym and the symptoms both chose, no score."""

    pseudonym = String(required=True, metadata={"example": "amber-heron-4821"})
    similar = Boolean(required=True, metadata={"description": "Found in ranked mode."})
    shared = List(Nested(HpoTerm), required=True)
    connection = Nested(ConnectionState, required=True, allow_none=True)


class MatchList(Schema):
    matches = List(Nested(Match), required=True)


class Connection(Schema):
    """A connection as one of its two patients sees it; dumped from (row, viewer, unread)."""

    id = String(required=True, metadata={"description": "Once accepted, the conversation id on /chat."})
    peer = String(required=True, allow_none=True, metadata={"description": "The other patient's pseudonym."})
    state = String(required=True, validate=OneOf(("pending", "accepted", "declined")))
    direction = String(required=True, validate=OneOf(("in", "out")))
    unread = Integer(required=True)
    created_at = Moment(required=True)
    decided_at = Moment(required=True, allow_none=True)

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        row, viewer, unread = obj
        if attr == "peer":
            peer = db.session.get(models.User, matching.peer_of(row, viewer))
            return matching.pseudonym_of(peer, runtime.pseudonym_key()) if peer else None
        if attr == "direction":
            return "out" if row.requester_id == viewer.id else "in"
        if attr == "unread":
            return unread
        return super().get_attribute(row, attr, default)


def connection_json(connection: models.Connection, me: models.User, unread: int = 0) -> dict[str, Any]:
    """A connection as `me` sees it, for the /chat socket's `connection` event (the same shape)."""
    return Connection().dump((connection, me, unread))


class ConnectionAnswer(Schema):
    connection = Nested(Connection, required=True)


class ConnectionList(Paged):
    connections = List(Nested(Connection), required=True, metadata={"description": "Newest first."})


class BlockInput(Schema):
    pseudonym = Text(required=True, error_messages=_says(PSEUDONYM), metadata={"example": "amber-heron-4821"})


class BlockedPatient(Schema):
    """A block the caller made; dumped from (row, pseudonym)."""

    pseudonym = String(required=True)
    created_at = Moment(required=True)

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        row, name = obj
        return name if attr == "pseudonym" else super().get_attribute(row, attr, default)


class BlockAnswer(Schema):
    block = Nested(BlockedPatient, required=True)


class BlockList(Paged):
    blocks = List(Nested(BlockedPatient), required=True, metadata={"description": "Newest first."})


class ChatKeyInput(Schema):
    key = Text(
        required=True,
        validate=Length(max=MAX_KEY, error=KEY),
        error_messages=_says(KEY),
        metadata={"description": "A P-256 public key: the 65-byte uncompressed point in base64url."},
    )
    device = Text(
        load_default=None,
        allow_none=True,
        validate=Length(max=32, error=DEVICE),
        error_messages=_says(DEVICE),
        metadata={"description": "This device's id: 16 random bytes in base64url, made once per device."},
    )


class ChatKey(Schema):
    """A chat identity key and its `chat_key` transaction on the ledger (docs/api.md)."""

    key = String(required=True)
    fingerprint = String(required=True, metadata={"description": "SHA-256 hex of the 65-byte point."})
    tx = String(required=True, attribute="tx_hash", metadata={"description": "The `chat_key` transaction's hash."})
    height = BlockHeight(
        required=True,
        allow_none=True,
        attribute="tx_hash",
        dump_only=True,
        metadata={"description": "null while pending."},
    )
    salt = String(required=True)
    subject = String(required=True, metadata={"description": "SHA-256 hex of salt || UTF-8 pseudonym."})
    registered_at = Moment(required=True, attribute="created_at")
    superseded_at = Moment(required=True, allow_none=True)
    device = String(required=True, metadata={"description": "The device's id; empty for a key from before device ids."})
    revoked_at = Moment(required=True, allow_none=True, metadata={"description": "Set once the device was removed."})
    revoke_tx = String(
        required=True,
        allow_none=True,
        attribute="revoke_tx_hash",
        metadata={"description": "The `chat_key_revoke` transaction's hash, once the device was removed."},
    )
    revoke_height = BlockHeight(
        required=True,
        allow_none=True,
        attribute="revoke_tx_hash",
        dump_only=True,
        metadata={"description": "The revocation's block; null while pending or not revoked."},
    )


class PeerChatKey(ChatKey):
    """A peer's newest device key (the fields of ChatKey), every device's current key, their
    superseded keys and their revoked ones, newest first; dumped from a service PeerKeys."""

    devices = List(Nested(ChatKey), required=True, metadata={"description": "One current key per device."})
    previous = List(Nested(ChatKey), required=True, metadata={"description": "Superseded keys."})
    revoked = List(Nested(ChatKey), required=True, metadata={"description": "Keys of removed devices."})

    def get_attribute(self, obj: Any, attr: str, default: Any) -> Any:
        if attr in ("devices", "previous", "revoked"):
            return getattr(obj, attr)
        return super().get_attribute(obj.devices[0], attr, default)


class ChatKeyAnswer(Schema):
    key = Nested(ChatKey, required=True)


class OwnChatKeyAnswer(Schema):
    key = Nested(ChatKey, required=True, allow_none=True, metadata={"description": "null before one is registered."})


class PeerChatKeyAnswer(Schema):
    key = Nested(PeerChatKey, required=True)


class DeviceList(Schema):
    devices = List(Nested(ChatKey), required=True, metadata={"description": "Newest first."})


class DeviceAnswer(Schema):
    device = Nested(ChatKey, required=True)


# -- documented answers ---------------------------------------------------------------------


def _errors(**answers: str) -> dict[int, dict[str, Any]]:
    """Error answers for @bp.doc: `e404="..."` -> {404: {"description", Error content}}; every
    route here also answers 401 without a valid token and 403 to accounts other than patients."""
    described = {
        "e401": "No valid bearer token: sign in first.",
        "e403": "Only patient accounts use matching and chat.",
        **answers,
    }
    return {int(name[1:]): answer(text) for name, text in sorted(described.items())}


RATE_LIMITED = "Too many of these requests this hour (the limit is per patient); failed ones count too."
OUT_OF_RANGE = "`limit` or `offset` out of range."


# -- vocabulary -----------------------------------------------------------------------------


@bp.get("/symptoms")
@bp.input(SymptomQuery, location="query", arg_name="query")
@bp.output(SymptomList)
@bp.doc(
    operation_id="searchSymptoms",
    summary="Search symptoms as you type",
    description="HPO phenotypes whose name or an everyday phrase for it answers `q` (docs/coded-data.md): "
    "the same words first, then names starting with them, shortest first; `matched` says which phrase found it.",
    security=BEARER,
    responses=_errors(e422="`q` is too long or `limit` is not a whole number from 1 to 50."),
)
def search_symptoms(query: dict[str, Any]) -> dict[str, Any]:
    api_actor("patient")
    found = runtime.vocabulary().search_symptoms(query["q"], query["limit"])
    return {"symptoms": [{"id": s.id, "name": s.name, "matched": s.matched} for s in found]}


@bp.get("/diagnoses")
@bp.input(DiagnosisQuery, location="query", arg_name="query")
@bp.output(DiagnosisList)
@bp.doc(
    operation_id="lookupDiagnosis",
    summary="Search ICD-10-CM diagnoses as you type",
    description="Categories and subcategories by code (or its start) or by words of the description "
    "(docs/coded-data.md): the same text first, broader codes first.",
    security=BEARER,
    responses=_errors(e422="`q` is too long or `limit` is not a whole number from 1 to 50."),
)
def lookup_diagnoses(query: dict[str, Any]) -> dict[str, Any]:
    api_actor("patient")
    found = runtime.vocabulary().search_diagnoses(query["q"], query["limit"])
    return {"diagnoses": [{"code": d.code, "description": d.description} for d in found]}


# -- profile and matches --------------------------------------------------------------------


@bp.get("/profile")
@bp.output(SymptomProfileAnswer)
@bp.doc(operation_id="getSymptomProfile", summary="The caller's symptom profile", security=BEARER, responses=_errors())
def get_profile() -> dict[str, Any]:
    actor = api_actor("patient")
    return {"profile": matching.get_profile(actor, ctx=runtime.matching_context())}


@bp.put("/profile")
@bp.input(SymptomProfileInput, location="json", arg_name="data")
@bp.output(SymptomProfileAnswer)
@bp.doc(
    operation_id="saveSymptomProfile",
    summary="Save (replace) the caller's symptom profile",
    security=BEARER,
    responses=_errors(
        e409="The profile changed at the same time; try again.",
        e422="A field is not valid, or a term or code is not in the vocabulary.",
        e429=RATE_LIMITED,
    ),
)
def put_profile(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    view = matching.put_profile(actor, data, ctx=runtime.matching_context(), now=utcnow())
    return {"profile": view}


@bp.delete("/profile")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="withdrawSymptomProfile",
    summary="Delete the caller's symptom profile (it leaves matching at once)",
    security=BEARER,
    responses=_errors(e404="You have no symptom profile."),
)
def withdraw_profile() -> str:
    actor = api_actor("patient")
    matching.withdraw_profile(actor, ctx=runtime.matching_context())
    return ""


@bp.get("/matches")
@bp.input(MatchQuery, location="query", arg_name="query")
@bp.output(MatchList)
@bp.doc(
    operation_id="findMatches",
    summary="Patients whose symptoms match the caller's, best first",
    security=BEARER,
    responses=_errors(
        e409="No profile yet, or the caller's profile is not discoverable (matching is mutual).",
        e422="`mode` is not exact or ranked, or `threshold` is not a number from 0 to 1.",
        e429=RATE_LIMITED,
    ),
)
def find_matches(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    found = matching.find_matches(
        actor, query["mode"], query.get("threshold"), ctx=runtime.matching_context(), now=utcnow()
    )
    return {"matches": found}


# -- connections and blocks -----------------------------------------------------------------


@bp.post("/matches/<pseudonym>/connect")
@bp.output(ConnectionAnswer, status_code=201)
@bp.doc(
    operation_id="requestConnection",
    summary="Ask a current match to connect",
    security=BEARER,
    responses=_errors(
        e404="No such match: anyone who is not a current match.",
        e409="Already connected, already pending or declined, or the caller's profile is not discoverable.",
        e422="You cannot connect to yourself.",
        e429=RATE_LIMITED,
    ),
)
def connect(pseudonym: str) -> dict[str, Any]:
    from portal.chat.events import notify_connection

    actor = api_actor("patient")
    connection = matching.connect(actor, pseudonym, ctx=runtime.matching_context(), now=utcnow())
    notify_connection(connection, connection.addressee_id)
    return {"connection": (connection, actor.user, 0)}


@bp.get("/connections")
@bp.input(Page, location="query", arg_name="query")
@bp.output(ConnectionList)
@bp.doc(
    operation_id="listConnections",
    summary="The caller's connection requests and conversations",
    security=BEARER,
    responses=_errors(e422=OUT_OF_RANGE),
)
def list_connections(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    # Connections with a blocked patient are left out row by row, so the list is paged after that.
    page = paging.paged_list(matching.list_connections(actor), *paging.bounds(query["limit"], query["offset"]))
    unread = chat.unread_counts(actor.user)
    return listed("connections", page.map(lambda c: (c, actor.user, unread.get(c.id, 0))))


def _decide(connection_id: str, accept: bool) -> dict[str, Any]:
    from portal.chat.events import notify_connection

    actor = api_actor("patient")
    connection = matching.decide(actor, connection_id, accept, now=utcnow())
    notify_connection(connection, connection.requester_id)
    return {"connection": (connection, actor.user, 0)}


DECIDE_ERRORS = _errors(
    e404="No such connection request for the caller (only its addressee decides).",
    e409="The request was already decided, or one of the two has blocked the other.",
)


@bp.post("/connections/<connection_id>/accept")
@bp.output(ConnectionAnswer)
@bp.doc(
    operation_id="acceptConnection", summary="Accept a connection request", security=BEARER, responses=DECIDE_ERRORS
)
def accept_connection(connection_id: str) -> dict[str, Any]:
    return _decide(connection_id, True)


@bp.post("/connections/<connection_id>/decline")
@bp.output(ConnectionAnswer)
@bp.doc(
    operation_id="declineConnection", summary="Decline a connection request", security=BEARER, responses=DECIDE_ERRORS
)
def decline_connection(connection_id: str) -> dict[str, Any]:
    return _decide(connection_id, False)


@bp.post("/blocks")
@bp.input(BlockInput, location="json", arg_name="data")
@bp.output(BlockAnswer, status_code=201)
@bp.doc(
    operation_id="blockPatient",
    summary="Block a patient met through matching or a connection",
    security=BEARER,
    responses=_errors(
        e404="No patient has this pseudonym (also for one the caller has not met).",
        e409="You have already blocked this patient.",
        e422="`pseudonym` is not text, or it is the caller's own.",
        e429=RATE_LIMITED,
    ),
)
def create_block(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    row, name = matching.block(actor, data["pseudonym"], ctx=runtime.matching_context(), now=utcnow())
    return {"block": (row, name)}


@bp.delete("/blocks/<pseudonym>")
@bp.output({}, status_code=204)
@bp.doc(
    operation_id="unblockPatient",
    summary="Lift a block",
    security=BEARER,
    responses=_errors(e404="You have not blocked this patient (unknown pseudonyms too)."),
)
def delete_block(pseudonym: str) -> str:
    matching.unblock(api_actor("patient"), pseudonym)
    return ""


@bp.get("/blocks")
@bp.input(Page, location="query", arg_name="query")
@bp.output(BlockList)
@bp.doc(
    operation_id="listBlockedPatients",
    summary="The patients the caller blocked",
    security=BEARER,
    responses=_errors(e422=OUT_OF_RANGE),
)
def list_blocks(query: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    # The service names each blocked patient by pseudonym (a keyed hash per row); it lists them all.
    blocks = matching.list_blocks(actor, ctx=runtime.matching_context())
    return listed("blocks", paging.paged_list(blocks, *paging.bounds(query["limit"], query["offset"])))


# -- chat keys ------------------------------------------------------------------------------


@bp.put("/chat/key")
@bp.input(ChatKeyInput, location="json", arg_name="data")
@bp.output(ChatKeyAnswer)
@bp.doc(
    operation_id="registerChatKey",
    summary="Register the caller's chat identity key on the ledger",
    security=BEARER,
    responses=_errors(
        e409="Your chat key changed at the same time; try again.",
        e422=KEY,
        e429=RATE_LIMITED,
    ),
)
def register_chat_key(data: dict[str, Any]) -> dict[str, Any]:
    actor = api_actor("patient")
    row = chat.register_key(
        actor,
        data["key"],
        node_key=runtime.node_key(),
        ctx=runtime.matching_context(),
        now=utcnow(),
        device=data["device"],
    )
    return {"key": row}


@bp.get("/chat/key")
@bp.output(OwnChatKeyAnswer)
@bp.doc(operation_id="getOwnChatKey", summary="The caller's current chat key", security=BEARER, responses=_errors())
def own_chat_key() -> dict[str, Any]:
    return {"key": chat.own_key(api_actor("patient"))}


@bp.get("/chat/keys/<pseudonym>")
@bp.output(PeerChatKeyAnswer)
@bp.doc(
    operation_id="getPeerChatKey",
    summary="A connected peer's chat keys",
    security=BEARER,
    responses=_errors(e404="No chat key for this pseudonym, or the peer has not registered one yet."),
)
def peer_chat_key(pseudonym: str) -> dict[str, Any]:
    return {"key": chat.peer_keys(api_actor("patient"), pseudonym)}


@bp.get("/chat/devices")
@bp.output(DeviceList)
@bp.doc(
    operation_id="listChatDevices",
    summary="The caller's devices: the current chat key of each",
    security=BEARER,
    responses=_errors(),
)
def chat_devices() -> dict[str, Any]:
    return {"devices": chat.own_devices(api_actor("patient"))}


@bp.delete("/chat/devices/<device>")
@bp.output(DeviceAnswer)
@bp.doc(
    operation_id="removeChatDevice",
    summary="Remove one of the caller's devices: its chat key is revoked on the ledger",
    security=BEARER,
    responses=_errors(
        e404="No such device of yours.",
        e409="This is the device you are using: remove it from another one.",
        e422=DEVICE,
        e429=RATE_LIMITED,
    ),
)
def remove_chat_device(device: str) -> dict[str, Any]:
    from portal.chat.events import close_sockets

    removed = chat.revoke_device(
        api_actor("patient"), device, node_key=runtime.node_key(), ctx=runtime.matching_context(), now=utcnow()
    )
    close_sockets(removed.sockets)  # their sign-ins have just ended
    return {"device": removed.key}
