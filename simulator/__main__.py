"""``python -m simulator``: run virtual NG households against the broker (GG_* settings, options override)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from gasguard.runtime import run
from simulator import service
from simulator.fleet import ConnectionMode
from simulator.scenarios import ScenarioName
from simulator.settings import SimulatorSettings

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    households: Annotated[int | None, typer.Option(help="Simulate only the first N NG households.")] = None,
    scenario: Annotated[ScenarioName | None, typer.Option(help="What to do besides telemetry.")] = None,
    mode: Annotated[ConnectionMode | None, typer.Option(help="One connection, or one per device.")] = None,
    telemetry_period_s: Annotated[float | None, typer.Option(help="Seconds between reports per device.")] = None,
    leak_interval_s: Annotated[float | None, typer.Option(help="Seconds between scripted leaks.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the scenario's random choices.")] = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM."""
    options: dict[str, Any] = {
        "households": households,
        "scenario": scenario,
        "mode": mode,
        "telemetry_period_s": telemetry_period_s,
        "leak_interval_s": leak_interval_s,
        "seed": seed,
    }
    try:
        settings = SimulatorSettings(**{name: value for name, value in options.items() if value is not None})
    except ValidationError as err:
        typer.echo(f"invalid settings:\n{err}", err=True)
        raise typer.Exit(code=2) from err
    run(partial(service.run, settings), log_level=settings.log_level)


if __name__ == "__main__":
    app()
