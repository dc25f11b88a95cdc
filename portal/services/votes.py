"""Stake-weighted votes for the hospital nodes that produce blocks (improved DPoS).

Any account (patient, doctor, admin) may vote for up to K candidate nodes. Only staff
endorsed by a member hospital carry stake (doctor 3, admin 10), and each hospital's staff
share one hospital's vote (docs/consensus.md, Voting power); a patient's vote weighs nothing.
A vote is a transaction signed with the account's own key; a later vote replaces the earlier
one. It counts from the first election (epoch start) after it is in a block.
"""

from __future__ import annotations

from datetime import datetime

from core.ledger import sign_transaction
from portal.extensions import db
from portal.models import epoch_ms
from portal.services import ledger
from portal.services.accounts import Actor
from portal.services.errors import ValidationFailed

MAX_SHOWN_ID = 64  # an unknown id is echoed back, but never at any length


def _nodes(value: object, candidates: list[str], limit: int) -> list[str]:
    """`value` as a vote: a non-empty list of at most `limit` distinct candidate node ids."""
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ValidationFailed("`nodes` must be a list of node ids.")
    if not value:
        raise ValidationFailed("Choose at least one node to vote for.")
    if len(set(value)) != len(value):
        raise ValidationFailed("Each node may be chosen only once.")
    if len(value) > limit:
        raise ValidationFailed(f"Choose at most {limit} node{'' if limit == 1 else 's'} (the number of delegates).")
    unknown = [n for n in value if n not in candidates]
    if unknown:
        raise ValidationFailed(
            f"{unknown[0][:MAX_SHOWN_ID]!r} is not a candidate node; candidates are: {', '.join(candidates)}."
        )
    return list(value)


def cast_vote(actor: Actor, nodes: object, *, now: datetime) -> str:
    """Sign and queue the actor's vote for `nodes`; returns the transaction's hash."""
    state = ledger.consensus_state()
    chosen = _nodes(nodes, list(state.node_keys), state.params.delegates)
    tx = sign_transaction("vote", {"nodes": chosen}, actor.keys(), epoch_ms(now))
    ledger.queue(tx, now)
    db.session.commit()
    return tx.hash


def current_vote(actor: Actor) -> list[str] | None:
    """The actor's vote as the chain has it (None if it has none in a block yet)."""
    chosen = ledger.consensus_state().votes.get(actor.user.key_id)
    return list(chosen) if chosen is not None else None
