"""One paging convention for every list that can grow, in the API and on portal pages.

A page is asked for with `limit` (DEFAULT_LIMIT if absent, at most MAX_LIMIT) and `offset`
(how many to skip), and comes with `total` (every item the caller may see with the same
filters) and `next_offset` (None on the last page). The query paged must have a total order
(newest first, then a unique column) so that walking the pages returns every item once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select

from portal.extensions import db
from portal.services.inputs import MAX_OFFSET, whole_number

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Page(Generic[T]):
    """At most `limit` items from `offset` on, and how many there are in all."""

    items: list[T]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        """Where the next page starts; None when nothing follows this page."""
        end = self.offset + len(self.items)
        return end if self.items and end < self.total else None

    @property
    def first(self) -> int:
        """The position (from 1) of the first item shown, 0 for an empty page: "Showing 1-50 of 312"."""
        return self.offset + 1 if self.items else 0

    @property
    def last(self) -> int:
        return self.offset + len(self.items)

    @property
    def chosen_limit(self) -> int | None:
        """The limit for the links to other pages: None (left out) when it is the default."""
        return None if self.limit == DEFAULT_LIMIT else self.limit

    @property
    def previous_offset(self) -> int | None:
        """Where the page before this one starts; None on the first page."""
        return max(self.offset - self.limit, 0) if self.offset > 0 else None

    def map(self, shape: Callable[[T], U]) -> Page[U]:
        """The same page with each item reshaped (for example into what a template shows)."""
        return Page([shape(item) for item in self.items], self.total, self.offset, self.limit)


def bounds(limit: object, offset: object) -> tuple[int, int]:
    """Validated paging arguments from a query string or form: limit 1-MAX_LIMIT (DEFAULT_LIMIT if
    absent or blank), offset 0 or more (0 if absent); ValidationFailed (422) otherwise."""
    return (
        whole_number(limit, "limit", default=DEFAULT_LIMIT, low=1, high=MAX_LIMIT),
        whole_number(offset, "offset", default=0, low=0, high=MAX_OFFSET),
    )


def paged(query: Select[Any], limit: int, offset: int) -> Page[Any]:
    """A page of `query`'s entities, counted and cut in SQL: one COUNT over the same filters and
    one SELECT ... LIMIT ... OFFSET. `query` must be ordered with a unique last key."""
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    items = list(db.session.scalars(query.limit(limit).offset(offset))) if offset < total else []
    return Page(items, total, offset, limit)


def paged_list(items: Sequence[T], limit: int, offset: int) -> Page[T]:
    """A page of a list already filtered in Python (what an access decision or a block excludes
    can only be known row by row); prefer `paged` wherever SQL can filter."""
    return Page(list(items[offset : offset + limit]), len(items), offset, limit)
