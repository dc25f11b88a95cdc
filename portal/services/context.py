"""What use cases need to know about the node they run on, passed in by the views."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from core.pre import EmergencyKey


@dataclass(frozen=True)
class NodeContext:
    node_id: str
    tag_key: bytes  # shared by the member hospitals (CATEGORY_TAG_KEY)
    pre_threshold: int  # m of a grant's proxies; 0: a majority of them
    box_public: bytes  # this node's box key, for grant packages sealed to itself
    emergency_key: Callable[[], EmergencyKey]
    peers: Any = None  # portal.services.network.Peers of a consortium, None for a node alone
    default_grant_days: int = 30
    max_grant_days: int = 365
    emergency_duration: timedelta = timedelta(hours=4)

    def category_tag(self, category: str) -> str:
        """Keyed hash of a record category: lets scopes be checked without storing the category."""
        return hmac.new(self.tag_key, category.encode(), hashlib.sha256).hexdigest()[:32]
