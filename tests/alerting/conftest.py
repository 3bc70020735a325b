"""Fixtures shared by the alerting service tests (defined with the service tests)."""

from tests.alerting.test_service import settings, valves

__all__ = ["settings", "valves"]
