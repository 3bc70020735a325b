"""gasguard."""
