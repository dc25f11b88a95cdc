"""Grant scopes: what part of a patient's history a grant or request covers.

A scope is {"type": "all"}, {"type": "categories", "categories": [...]} or
{"type": "dates", "from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}. Whether it covers a record is
decided from the record's index only (its date and its keyed category tag), so any member
node that knows the scope can decide it without opening the record.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from core.encoding import decode_canonical
from portal.models import Record
from portal.services.context import NodeContext
from portal.services.errors import ValidationFailed


def parse_scope(value: object, categories: tuple[str, ...]) -> dict[str, Any]:
    """A validated scope (see the module docstring); None means all records."""
    if value is None:
        return {"type": "all"}
    if not isinstance(value, dict) or value.get("type") not in ("all", "categories", "dates"):
        raise ValidationFailed('`scope` must be {"type": "all" | "categories" | "dates", ...}.')
    if value["type"] == "all":
        return {"type": "all"}
    if value["type"] == "categories":
        chosen = value.get("categories")
        if not isinstance(chosen, list) or not chosen or not all(c in categories for c in chosen):
            raise ValidationFailed(f"`scope.categories` must be a non-empty list from: {', '.join(categories)}.")
        return {"type": "categories", "categories": sorted(set(chosen))}
    try:
        start, end = date.fromisoformat(value.get("from", "")), date.fromisoformat(value.get("to", ""))
    except (TypeError, ValueError):
        raise ValidationFailed("`scope.from` and `scope.to` must be dates (YYYY-MM-DD).") from None
    if start > end:
        raise ValidationFailed("`scope.from` must not be after `scope.to`.")
    return {"type": "dates", "from": start.isoformat(), "to": end.isoformat()}


def within(narrow: dict[str, Any], wide: dict[str, Any]) -> bool:
    """Whether every record `narrow` covers is one `wide` covers, judged on the scopes alone
    (both validated): all of a kind's categories or dates inside, never a different kind."""
    if wide["type"] == "all":
        return True
    if narrow["type"] != wide["type"]:
        return False
    if wide["type"] == "categories":
        return set(narrow["categories"]) <= set(wide["categories"])
    return bool(wide["from"] <= narrow["from"] and narrow["to"] <= wide["to"])


def describe_scope(scope: dict[str, Any]) -> str:
    if scope["type"] == "categories":
        return "records in " + ", ".join(scope["categories"])
    if scope["type"] == "dates":
        return f"records from {scope['from']} to {scope['to']}"
    return "all records"


def salted_scope(stored: str) -> dict[str, Any]:
    """The scope inside a grant's stored, salted scope ({"salt", "scope"})."""
    return decode_canonical(stored.encode())["scope"]


def covers(scope: dict[str, Any], record: Record, node: NodeContext) -> bool:
    if scope["type"] == "categories":
        return record.category_tag in {node.category_tag(c) for c in scope["categories"]}
    if scope["type"] == "dates":
        return scope["from"] <= record.created_at.date().isoformat() <= scope["to"]
    return True
