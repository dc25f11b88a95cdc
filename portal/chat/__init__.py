"""Patient chat over Socket.IO (namespace /chat): the events are in `events`.

The blueprint has no pages; it exists so that the chat area registers like every other.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("chat", __name__)

from portal.chat import events  # noqa: E402,F401
