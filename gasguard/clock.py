"""Server time. Every stored timestamp GasGuard creates comes from here or from ``now()`` in SQL."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)
