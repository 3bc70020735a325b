"""The append-only audit log: every change and every read of a resident's full phone number.

Rows get the server's time (a trigger sets ``at``); UPDATE, DELETE and TRUNCATE are refused by the
database. Write the audit row in the same transaction as the change it describes.
"""

from __future__ import annotations

import logging

from pydantic import JsonValue

from registry.auth import User
from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)


async def record(conn: Conn, *, actor: User | str, action: str, object: str, detail: JsonValue = None) -> int:
    """Append one audit entry (``object`` like ``household:12``); returns its id."""
    who = actor.actor if isinstance(actor, User) else actor
    entry_id: int = await conn.fetchval(
        "INSERT INTO audit_log (actor, action, object, detail) VALUES ($1, $2, $3, $4) RETURNING id",
        who,
        action,
        object,
        {} if detail is None else detail,
    )
    _LOGGER.debug("audit %s %s %s", who, action, object)
    return entry_id
