"""``python -m alerting``: run the alerting service."""

from alerting.service import run as run_alerting
from alerting.settings import AlertingSettings
from gasguard.runtime import run


def main() -> None:
    """Build the settings once and run the service."""
    settings = AlertingSettings()
    run(lambda: run_alerting(settings), log_level=settings.log_level)


if __name__ == "__main__":
    main()
