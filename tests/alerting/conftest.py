"""Fixtures shared by the alerting service tests (defined with the tests that introduced them)."""

from tests.alerting.test_notifier import full_sandbox
from tests.alerting.test_service import settings, valves

__all__ = ["full_sandbox", "settings", "valves"]
