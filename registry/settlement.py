"""Quarterly settlement: the government share payable to each supplier from verified installations.

Only verified slips (all five signatures, verified by the housing bureau) of the quarter's months
count; each slip contributes its government share as adjusted by its latest spot-check finding.
Totals are given per supplier and gas type (NG and LPG are separate budget lines) and per town and
community. All amounts are integer fen; the XLSX shows yuan with two decimals computed exactly.

A settled quarter is frozen (`freeze_statement`): its statement is stored line by line in append-only
tables, and from then on that stored statement is the quarter's statement. Later edits (a spot-check
finding, a slip verified late) cannot change it silently: the quarter is recomputed on every read and
the lines that would now differ are listed next to the stored ones (`differences`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg
from openpyxl import Workbook
from openpyxl.styles import Font

from registry.finance import format_yuan
from registry.queries import Conn
from registry.spotcheck import LATEST_FINDING_JOIN, PAYABLE_SQL, findings_report

_LOGGER = logging.getLogger(__name__)


def quarter_months(year: int, quarter: int) -> tuple[date, date]:
    """First day of the quarter's first month and of the month after its last; ValueError on a bad quarter."""
    if quarter not in (1, 2, 3, 4):
        raise ValueError("quarter must be 1–4")
    start = date(year, 3 * quarter - 2, 1)
    end = date(year + 1, 1, 1) if quarter == 4 else date(year, 3 * quarter + 1, 1)
    return start, end


@dataclass(frozen=True)
class StatementLine:
    """Totals of one (supplier, gas type, town, community) group."""

    supplier: str
    gas_type: str
    town_code: str
    town_name: str
    community_code: str
    community_name: str
    slips: int
    government_fen: int
    adjustment_fen: int
    payable_fen: int


@dataclass(frozen=True)
class Statement:
    """A quarter's statement: lines per community and the totals derived from them."""

    year: int
    quarter: int
    lines: tuple[StatementLine, ...]

    def totals_by_supplier(self) -> dict[tuple[str, str], int]:
        """Payable fen per (supplier, gas type)."""
        totals: dict[tuple[str, str], int] = {}
        for line in self.lines:
            key = (line.supplier, line.gas_type)
            totals[key] = totals.get(key, 0) + line.payable_fen
        return totals

    def totals_by_town(self) -> dict[tuple[str, str], int]:
        """Payable fen per (town name, gas type)."""
        totals: dict[tuple[str, str], int] = {}
        for line in self.lines:
            key = (line.town_name, line.gas_type)
            totals[key] = totals.get(key, 0) + line.payable_fen
        return totals

    @property
    def payable_fen(self) -> int:
        """Everything payable this quarter, both budget lines."""
        return sum(line.payable_fen for line in self.lines)


async def quarterly_statement(conn: Conn, *, year: int, quarter: int) -> Statement:
    """The government share payable per supplier, town and community from the quarter's verified slips."""
    start, end = quarter_months(year, quarter)
    rows = await conn.fetch(
        f"""
        SELECT h.supplier, ch.gas_type, t.code AS town_code, t.name AS town_name, c.code AS community_code,
               c.name AS community_name, count(*) AS slips, sum(ch.government_fen) AS government_fen,
               sum({PAYABLE_SQL}) AS payable_fen
        FROM confirmation_slip s
        JOIN slip_charge ch ON ch.slip_id = s.id
        JOIN household h ON h.id = s.household_id
        JOIN community c ON c.code = h.community_code
        JOIN town t ON t.code = c.town_code
        {LATEST_FINDING_JOIN}
        WHERE s.verified_at IS NOT NULL AND s.month >= $1 AND s.month < $2
        GROUP BY h.supplier, ch.gas_type, t.code, t.name, c.code, c.name
        ORDER BY h.supplier, ch.gas_type, t.code, c.code
        """,
        start,
        end,
    )
    lines = tuple(
        StatementLine(
            supplier=r["supplier"],
            gas_type=r["gas_type"],
            town_code=r["town_code"],
            town_name=r["town_name"],
            community_code=r["community_code"],
            community_name=r["community_name"],
            slips=r["slips"],
            government_fen=int(r["government_fen"]),
            adjustment_fen=int(r["payable_fen"]) - int(r["government_fen"]),
            payable_fen=int(r["payable_fen"]),
        )
        for r in rows
    )
    return Statement(year=year, quarter=quarter, lines=lines)


class SettlementError(Exception):
    """A quarter cannot be frozen (already frozen, or not over yet)."""


@dataclass(frozen=True)
class FrozenStatement:
    """A quarter's statement as stored when it was settled."""

    statement: Statement
    frozen_at: datetime
    frozen_by: str


@dataclass(frozen=True)
class LineDifference:
    """How one (supplier, gas type, community) line recomputed now differs from the stored statement.

    ``frozen`` or ``current`` is None when the line exists on one side only.
    """

    supplier: str
    gas_type: str
    community_code: str
    frozen: StatementLine | None
    current: StatementLine | None


_LINE_COLUMNS = (
    "supplier, gas_type, town_code, town_name, community_code, community_name, slips, government_fen,"
    " adjustment_fen, payable_fen"
)


async def frozen_statement(conn: Conn, *, year: int, quarter: int) -> FrozenStatement | None:
    """The stored statement of a settled quarter, or None if the quarter has not been frozen."""
    head = await conn.fetchrow(
        "SELECT id, recorded_at, recorded_by FROM settlement_statement WHERE year = $1 AND quarter = $2", year, quarter
    )
    if head is None:
        return None
    rows = await conn.fetch(
        f"SELECT {_LINE_COLUMNS} FROM settlement_statement_line WHERE statement_id = $1 ORDER BY line_no", head["id"]
    )
    lines = tuple(StatementLine(**dict(row)) for row in rows)
    return FrozenStatement(
        statement=Statement(year=year, quarter=quarter, lines=lines),
        frozen_at=head["recorded_at"],
        frozen_by=head["recorded_by"],
    )


async def freeze_statement(conn: Conn, *, year: int, quarter: int, actor: str, today: date) -> FrozenStatement:
    """Compute the quarter's statement and store it for good; call inside a transaction.

    Raises:
        SettlementError: The quarter is not over yet on ``today``, or it was frozen already.
    """
    _, end = quarter_months(year, quarter)
    if today < end:
        raise SettlementError(f"{year}年第{quarter}季度尚未结束，不能结算冻结")
    statement = await quarterly_statement(conn, year=year, quarter=quarter)
    try:
        statement_id = await conn.fetchval(
            """
            INSERT INTO settlement_statement (year, quarter, payable_fen, slips, recorded_by)
            VALUES ($1, $2, $3, $4, $5) RETURNING id
            """,
            year,
            quarter,
            statement.payable_fen,
            sum(line.slips for line in statement.lines),
            actor,
        )
    except asyncpg.UniqueViolationError as err:
        raise SettlementError(f"{year}年第{quarter}季度已结算冻结") from err
    await conn.executemany(
        f"""
        INSERT INTO settlement_statement_line (statement_id, line_no, {_LINE_COLUMNS})
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        """,
        [
            (
                statement_id,
                line_no,
                line.supplier,
                line.gas_type,
                line.town_code,
                line.town_name,
                line.community_code,
                line.community_name,
                line.slips,
                line.government_fen,
                line.adjustment_fen,
                line.payable_fen,
            )
            for line_no, line in enumerate(statement.lines, start=1)
        ],
    )
    frozen = await frozen_statement(conn, year=year, quarter=quarter)
    assert frozen is not None  # stored just above, in this transaction
    _LOGGER.info("settlement %d Q%d frozen by %s: %d fen", year, quarter, actor, statement.payable_fen)
    return frozen


def differences(frozen: Statement, current: Statement) -> list[LineDifference]:
    """Lines whose slips or amounts differ between the stored statement and a recomputation."""

    def key(line: StatementLine) -> tuple[str, str, str]:
        return (line.supplier, line.gas_type, line.community_code)

    def figures(line: StatementLine | None) -> tuple[int, int, int] | None:
        return None if line is None else (line.slips, line.government_fen, line.payable_fen)

    stored = {key(line): line for line in frozen.lines}
    now = {key(line): line for line in current.lines}
    return [
        LineDifference(supplier=k[0], gas_type=k[1], community_code=k[2], frozen=stored.get(k), current=now.get(k))
        for k in sorted(stored.keys() | now.keys())
        if figures(stored.get(k)) != figures(now.get(k))
    ]


_GAS_LABEL = {"NG": "天然气", "LPG": "液化石油气"}


async def statement_xlsx(conn: Conn, statement: Statement, *, frozen_at: datetime | None = None) -> bytes:
    """The statement as an XLSX: per supplier, per town and community, and the spot-check adjustments."""
    workbook = Workbook()
    bold = Font(bold=True)
    summary = workbook.active
    assert summary is not None
    summary.title = "按供气单位"
    status = "未结算（按当前数据计算）" if frozen_at is None else f"已结算冻结（{frozen_at:%Y-%m-%d %H:%M} UTC）"
    summary.append([f"乌审旗燃气技防设施政府出资部分结算表 {statement.year}年第{statement.quarter}季度", status])
    summary.append(
        ["供气单位", "燃气类型", "确认单数", "政府出资（元）", "抽查调整（元）", "应付金额（元）", "应付金额（分）"]
    )
    for cell in summary[2]:
        cell.font = bold
    groups: dict[tuple[str, str], list[StatementLine]] = {}
    for line in statement.lines:
        groups.setdefault((line.supplier, line.gas_type), []).append(line)
    for (supplier, gas_type), lines in groups.items():
        government = sum(x.government_fen for x in lines)
        payable = sum(x.payable_fen for x in lines)
        summary.append(
            [
                supplier,
                _GAS_LABEL[gas_type],
                sum(x.slips for x in lines),
                format_yuan(government),
                format_yuan(payable - government),
                format_yuan(payable),
                payable,
            ]
        )
    summary.append(
        [
            "合计",
            "",
            sum(x.slips for x in statement.lines),
            "",
            "",
            format_yuan(statement.payable_fen),
            statement.payable_fen,
        ]
    )

    detail = workbook.create_sheet("按苏木镇和社区")
    detail.append(
        [
            "供气单位",
            "燃气类型",
            "苏木镇",
            "社区代码",
            "社区",
            "确认单数",
            "政府出资（元）",
            "抽查调整（元）",
            "应付金额（元）",
        ]
    )
    for cell in detail[1]:
        cell.font = bold
    for line in statement.lines:
        detail.append(
            [
                line.supplier,
                _GAS_LABEL[line.gas_type],
                line.town_name,
                line.community_code,
                line.community_name,
                line.slips,
                format_yuan(line.government_fen),
                format_yuan(line.adjustment_fen),
                format_yuan(line.payable_fen),
            ]
        )
    for (town, gas_type), fen in sorted(statement.totals_by_town().items()):
        detail.append(["", _GAS_LABEL[gas_type], f"{town} 小计", "", "", "", "", "", format_yuan(fen)])

    start, end = quarter_months(statement.year, statement.quarter)
    checks = workbook.create_sheet("抽查结果")
    checks.append(["月份", "社区代码", "确认单", "抽查结果", "政府出资（元）", "核定应付（元）", "说明"])
    for cell in checks[1]:
        cell.font = bold
    labels = {"match": "相符", "discrepancy": "不符", "missing": "未安装/缺失"}
    for row in await findings_report(conn):
        if start <= row.month < end:
            checks.append(
                [
                    row.month.strftime("%Y-%m"),
                    row.community_code,
                    row.slip_id,
                    "待核查" if row.finding is None else labels[row.finding.value],
                    format_yuan(row.government_fen),
                    format_yuan(row.payable_government_fen),
                    row.note or "",
                ]
            )
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
