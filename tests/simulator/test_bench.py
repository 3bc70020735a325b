"""The benchmark driver's building blocks: statistics, broker-config rewriting, payloads, the report.

No timing is asserted here; `python -m simulator.bench` itself is the measurement.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gasguard.protocol import AlarmTelemetry, ValveTelemetry, decode_telemetry
from simulator.bench import (
    CLIENTS,
    DEFAULT_BROKER_CONFIG,
    STOP_MARKER,
    AlarmLegs,
    AlarmResult,
    BenchReport,
    BurstResult,
    CpuUse,
    IngestResult,
    LatencyStats,
    LogFindings,
    MachineInfo,
    PublishJob,
    ReceiveResult,
    RoundTripResult,
    SmsResult,
    log_findings,
    markdown_table,
    parse_options,
    per_second,
    percentile,
    render_report,
    rewrite_broker_config,
    split_rates,
    steady_rate,
    summary_lines,
    telemetry_payload,
    worker_argv,
)

SHIPPED = DEFAULT_BROKER_CONFIG.read_text()


def directives(text: str) -> list[str]:
    """Non-comment, non-blank lines with whitespace normalised."""
    lines = (line.split("#", 1)[0].split() for line in text.splitlines())
    return [" ".join(tokens) for tokens in lines if tokens]


def rewrite(text: str = SHIPPED) -> str:
    return rewrite_broker_config(
        text, host="127.0.0.1", port=41883, persistence_dir=Path("/tmp/b/data"), log_file=Path("/tmp/b/m.log")
    )


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; the input need not be sorted."""
    samples = [float(n) for n in range(100, 0, -1)]
    assert percentile(samples, 50) == 50
    assert percentile(samples, 99) == 99
    assert percentile(samples, 100) == 100
    assert percentile(samples, 7) == 7  # 0.07 * 100 is not quite 7 in floating point
    assert percentile([3.0], 99) == 3.0


def test_percentile_of_few_samples_is_an_actual_sample() -> None:
    """Nearest rank never interpolates: p99 of ten samples is the largest."""
    samples = [0.1 * n for n in range(1, 11)]
    assert percentile(samples, 99) == samples[-1]
    assert percentile(samples, 50) == samples[4]


@pytest.mark.parametrize(("samples", "q"), [([], 50), ([1.0], 0), ([1.0], 101)])
def test_percentile_rejects_bad_input(samples: list[float], q: float) -> None:
    """No samples, or a percentile outside (0, 100], is an error."""
    with pytest.raises(ValueError, match="percentile"):
        percentile(samples, q)


def test_latency_stats_summarise() -> None:
    """LatencyStats carries count, extremes, percentiles and mean."""
    stats = LatencyStats.of([0.004, 0.001, 0.002, 0.003])
    assert (stats.count, stats.minimum, stats.maximum) == (4, 0.001, 0.004)
    assert stats.p50 == 0.002
    assert stats.p99 == 0.004
    assert stats.mean == pytest.approx(0.0025)
    with pytest.raises(ValueError, match="no latency samples"):
        LatencyStats.of([])


def test_per_second_without_elapsed_time_is_zero() -> None:
    """A rate over no time is reported as 0, not a division error."""
    assert per_second(100, 2.0) == 50.0
    assert per_second(1, 0.0) == 0.0


def test_split_rates_before_and_after_the_publishers() -> None:
    """Marks every 1000 messages give one rate before the split and one after."""
    points = [(0.0, 1), (1.0, 1000), (2.0, 2000), (3.0, 3000), (3.5, 4000), (4.0, 5000)]
    before, after = split_rates(points, split_at=3.0)
    assert before == pytest.approx(2999 / 3.0)
    assert after == pytest.approx(2000.0)
    before, after = split_rates(points, split_at=10.0)
    assert before == pytest.approx(4999 / 4.0)
    assert after is None
    assert split_rates([], split_at=1.0) == (None, None)


def test_steady_rate_cuts_off_start_up_and_tail() -> None:
    """The steady ingest rate is measured between the samples at 10 % and 90 % of the final count."""
    samples = [(0.0, 0), (1.0, 100), (2.0, 1100), (3.0, 2100), (4.0, 2150)]
    assert steady_rate(samples) == pytest.approx(1000.0)


def test_rewrite_keeps_every_shipped_setting_but_the_three() -> None:
    """Only listener, persistence_location and log_dest change; nodelay and queue limits stay as shipped."""
    rewritten = directives(rewrite())
    changed = {"listener", "persistence_location", "log_dest"}
    kept = [d for d in directives(SHIPPED) if d.split()[0] not in changed]
    assert [d for d in rewritten if d.split()[0] not in changed] == kept
    for setting in ("set_tcp_nodelay true", "max_inflight_messages", "max_queued_messages", "max_queued_bytes"):
        assert any(d.startswith(setting) for d in kept), f"shipped config lost {setting}"
        assert any(d.startswith(setting) for d in rewritten)
    assert [d for d in rewritten if d.startswith("listener")] == ["listener 41883 127.0.0.1"]
    assert [d for d in rewritten if d.startswith("persistence_location")] == ["persistence_location /tmp/b/data/"]
    assert [d for d in rewritten if d.startswith("log_dest")] == ["log_dest file /tmp/b/m.log"]


def test_rewrite_adds_what_the_config_lacks() -> None:
    """A config without persistence_location or log_dest gets them, so the broker never writes elsewhere."""
    rewritten = directives(rewrite("listener 1883\nlog_dest stdout\nlog_dest syslog\n"))
    assert rewritten == ["listener 41883 127.0.0.1", "log_dest file /tmp/b/m.log", "persistence_location /tmp/b/data/"]


@pytest.mark.parametrize("text", ["persistence true\n", "listener 1883\nlistener 8883\n"])
def test_rewrite_needs_exactly_one_listener(text: str) -> None:
    """With no listener, or several, the driver would not know which to move."""
    with pytest.raises(ValueError, match="exactly one listener"):
        rewrite(text)


def test_telemetry_payload_is_protocol_v1_of_the_right_kind() -> None:
    """Alarms send AlarmTelemetry, valves ValveTelemetry, both around 125 bytes."""
    ts = datetime(2026, 11, 29, 0, 43, tzinfo=UTC)
    alarm = decode_telemetry(telemetry_payload("GA-000123", 7, ts))
    valve = decode_telemetry(telemetry_payload("GV-000123", 7, ts))
    assert isinstance(alarm, AlarmTelemetry)
    assert isinstance(valve, ValveTelemetry)
    assert (alarm.seq, alarm.ts) == (7, ts)
    for device_id in ("GA-000123", "GV-000123"):
        assert 100 <= len(telemetry_payload(device_id, 7, ts)) <= 150


def test_worker_argv_carries_the_job_as_json() -> None:
    """A worker's job travels as one JSON argument and comes back equal."""
    job = PublishJob(
        url="mqtt://127.0.0.1:1", root="r", devices_file="/d", rounds=2, client_id="c", ts_start=0.0, deadline_s=9
    )
    argv = worker_argv("publish", job)
    assert argv[1:5] == ["-m", "simulator.bench", "worker", "publish"]
    assert PublishJob(**json.loads(argv[5])) == job


def test_log_findings_split_at_the_stop_marker() -> None:
    """Warnings before the driver's stop marker are the run's; after it, the shutdown's."""
    text = (
        "2026-11-29 INFO    alerting.service: alerting ready\n"
        "2026-11-29 WARNING gasguard.mqtt: MQTT session lost its connection\n"
        f"\n{STOP_MARKER} alerting\n"
        "2026-11-29 ERROR   alerting.recorder: boom\n"
        "1795942239: Warning: Outgoing messages are being dropped\n"
    )
    findings = log_findings("alerting", text)
    assert [line.split()[1] for line in findings.during_run] == ["WARNING"]
    assert len(findings.at_shutdown) == 2


def test_markdown_table() -> None:
    """Header, separator, one line per row."""
    assert markdown_table(("a", "b"), [(1, 2)]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_parse_options() -> None:
    """Defaults cover all three clients; --quick shrinks the run and writes no report; bad clients fail."""
    assert parse_options([]).clients == CLIENTS
    quick = parse_options(["--quick", "--clients", "gmqtt"])
    assert quick.output is None
    assert quick.clients == ("gmqtt",)
    assert quick.alarms < parse_options([]).alarms
    assert parse_options(["--output", "-"]).output is None
    with pytest.raises(SystemExit):
        parse_options(["--clients", "mqttjs"])


def _stats(ms: float) -> LatencyStats:
    return LatencyStats.of([ms / 1000, 2 * ms / 1000])


def sample_report() -> BenchReport:
    """A report with made-up figures, for the renderer."""
    receive = (
        ReceiveResult("gmqtt", "0.8.0", 1000, 1000, 1000, 1000, 9000.0, 0.1, 20000.0, 0.05, 128.0, 8000.0, 9500.0),
        ReceiveResult("paho", "2.2.0", 1000, 1000, 1000, 1000, 6000.0, 0.2, 20000.0, 0.1, 128.0, 5000.0, 6500.0),
        ReceiveResult("aiomqtt", "not installed", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, error="not installed"),
    )
    alarms = AlarmResult(
        alarms=2,
        warmup=1,
        gap_s=0.02,
        to_command=_stats(2),
        to_recorded=_stats(20),
        legs=AlarmLegs(
            to_alerting=_stats(0.5),
            in_alerting=_stats(0.05),
            to_valve=_stats(0.5),
            closed_in_alerting=_stats(4),
            closed_to_recorded=_stats(15),
        ),
        poll_query=_stats(0.5),
        incidents=5,
        closed_recorded=5,
        not_closed_incidents=0,
        resends=0,
        repeated_commands=0,
        dead_letters=0,
        burst=BurstResult(alarms=2, to_command=_stats(50), to_recorded=_stats(4000)),
        sms=SmsResult(
            expected=5,
            received=5,
            said_closed=5,
            not_closed_one_at_a_time=0,
            not_closed_burst=0,
            hold_s=10.0,
            drain_s=0.1,
            alarm_to_sms=_stats(30),
            burst_alarm_to_sms=_stats(5000),
        ),
    )
    ingest = IngestResult(
        messages=1000,
        devices=100,
        publishers=2,
        payload_bytes=128.0,
        publish_rate=15000.0,
        first_received_after_s=0.01,
        first_row_after_s=0.2,
        commit_span_s=0.2,
        rows_per_s=6000.0,
        steady_rows_per_s=6100.0,
        end_to_end_rows_per_s=5000.0,
        receive_rows_per_s=6500.0,
        rows=1000,
        distinct=1000,
        dead_letters=0,
        events=0,
    )
    return BenchReport(
        started=datetime(2026, 11, 29, 9, 0, tzinfo=UTC),
        duration_s=240.0,
        cpu=CpuUse(available_s=480.0, busy_s=400.0, steal_s=1.0, own_s=300.0),
        machine=MachineInfo(
            cpu_model="AMD EPYC",
            cores=2,
            memory_gib=23.5,
            kernel="6.1",
            python="3.11.7",
            mosquitto="2.0.11",
            postgresql="15.20",
            timescaledb="no",
            clients={"gmqtt": "0.8.0", "paho": "2.2.0", "aiomqtt": "not installed"},
            load_before=(0.2, 0.3, 0.4),
            code="commit 0123abc",
        ),
        load_after=(1.5, 1.0, 0.6),
        households=1122,
        round_trip=RoundTripResult(latency=_stats(0.6), payload_bytes=10),
        receive=receive,
        alarms=alarms,
        ingest=ingest,
        findings=(LogFindings("alerting", ("2026 WARNING x: y",), ()),),
    )


def test_render_report_has_every_section_with_baselines() -> None:
    """The report names the machine, each benchmark with its baseline, and the log findings."""
    text = render_report(sample_report())
    for heading in (
        "## Machine",
        "## 1. Bare broker round trip",
        "## 2. Bare MQTT receive rate",
        "## 3. Alarm → close → recorded",
        "## 4. Sustained telemetry ingest",
        "## Warnings and errors in the logs",
    ):
        assert heading in text
    assert "bare broker round trip (section 1)" in text
    assert "bare gmqtt receive rate (section 2)" in text
    assert "not measured: not installed" in text
    assert "The machine was not idle" not in text
    assert "2026 WARNING x: y" in text


def test_summary_lines_name_the_headline_figures() -> None:
    """The terminal summary has the round trip, each client, the alarm path, SMS and ingest."""
    lines = "\n".join(summary_lines(sample_report()))
    for needle in ("bare round trip", "receive gmqtt", "receive aiomqtt", "alarm -> close", "SMS", "ingest"):
        assert needle in lines
