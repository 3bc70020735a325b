"""Rosters (花名册): monthly household batches from the communities, imported all-or-nothing, exported back.

An import parses a CSV or XLSX file, COPYs every row into a temporary staging table and validates
them set-wise in SQL (unknown community, bad phone, duplicate household, missing field). Any error
rolls the whole batch back and returns the row-by-row report (also as an XLSX with the errors
marked). A file whose SHA-256 was imported before changes nothing, and rows equal to what is stored
are counted as unchanged, so re-importing is idempotent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
from openpyxl import Workbook
from openpyxl.styles import Font, PatternFill
from python_calamine import CalamineWorkbook

from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)

#: Column keys in file order, with the Chinese headers the communities' spreadsheets use.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("community_code", "社区代码"),
    ("building", "楼号"),
    ("unit", "单元"),
    ("room", "房号"),
    ("gas_type", "燃气类型"),
    ("supplier", "供气单位"),
    ("resident_name", "户主姓名"),
    ("resident_phone", "联系电话"),
    ("gas_connected_on", "通气日期"),
)
HEADERS: tuple[str, ...] = tuple(header for _, header in COLUMNS)
REQUIRED: tuple[str, ...] = (
    "community_code",
    "building",
    "unit",
    "room",
    "gas_type",
    "supplier",
    "resident_name",
    "resident_phone",
)
_LABEL = dict(COLUMNS)
_GAS_TYPES = {"NG": "NG", "天然气": "NG", "LPG": "LPG", "液化石油气": "LPG", "液化气": "LPG"}
#: Communities submit each month's batch by this day of the month (实施方案 五（四）).
DUE_DAY = 10


class RosterFileError(ValueError):
    """The file cannot be read as a roster at all (format, encoding, headers)."""


@dataclass(frozen=True)
class RowError:
    """One problem with one row (``row`` is the spreadsheet row number, header = 1)."""

    row: int
    column: str
    message: str


@dataclass(frozen=True)
class ParsedRoster:
    """A roster file read into header-ordered string cells."""

    rows: tuple[tuple[str, ...], ...]
    sha256: bytes


@dataclass(frozen=True)
class ImportResult:
    """Outcome of an import: committed (``batch_id``) or rejected with ``errors``."""

    batch_id: int | None
    already_imported: bool
    row_count: int
    inserted: int
    updated: int
    unchanged: int
    late: bool
    errors: tuple[RowError, ...]

    @property
    def committed(self) -> bool:
        """Whether the batch is in the database (now or from an earlier identical import)."""
        return self.batch_id is not None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _header_index(header: Sequence[str]) -> list[int]:
    names = [h.strip() for h in header]
    index: list[int] = []
    for key, label in COLUMNS:
        if label in names:
            index.append(names.index(label))
        elif key in names:
            index.append(names.index(key))
        elif key == "gas_connected_on":
            index.append(-1)  # optional column
        else:
            raise RosterFileError(f"第1行缺少表头“{label}”")
    return index


def _normalise(raw_rows: Iterable[Sequence[Any]]) -> list[tuple[str, ...]]:
    iterator = iter(raw_rows)
    try:
        header = [_cell(v) for v in next(iterator)]
    except StopIteration:
        raise RosterFileError("文件为空") from None
    index = _header_index(header)
    rows: list[tuple[str, ...]] = []
    for raw in iterator:
        cells = [_cell(v) for v in raw]
        if not any(cells):
            continue  # blank lines at the end of a sheet
        rows.append(tuple(cells[i] if 0 <= i < len(cells) else "" for i in index))
    return rows


def parse_roster(data: bytes, filename: str) -> ParsedRoster:
    """Read a CSV (UTF-8 or GB18030) or XLSX roster; RosterFileError if it is neither."""
    digest = hashlib.sha256(data).digest()
    if data[:2] == b"PK" or filename.lower().endswith(".xlsx"):
        # python-calamine (Rust) reads a 40,000-row sheet in under a second; openpyxl needs about twenty.
        try:
            sheet = CalamineWorkbook.from_filelike(io.BytesIO(data)).get_sheet_by_index(0).to_python()
        except Exception as err:  # a damaged file can fail in the zip, XML or cell layer
            raise RosterFileError(f"无法读取XLSX文件：{err}") from err
        return ParsedRoster(rows=tuple(_normalise(sheet)), sha256=digest)
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise RosterFileError("CSV文件编码无法识别（请使用UTF-8或GBK）")
    return ParsedRoster(rows=tuple(_normalise(csv.reader(io.StringIO(text)))), sha256=digest)


def _parse_date(text: str) -> date | None:
    for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).date()  # noqa: DTZ007 - a calendar date, no time zone
        except ValueError:
            continue
    return None


def _stage_records(rows: Sequence[tuple[str, ...]]) -> tuple[list[tuple[Any, ...]], list[RowError]]:
    """Rows as staging records (row numbers from 2), plus the errors only Python can see (dates, gas type)."""
    records: list[tuple[Any, ...]] = []
    errors: list[RowError] = []
    for offset, cells in enumerate(rows):
        row_no = offset + 2
        values: dict[str, Any] = {key: (cells[i] or None) for i, (key, _) in enumerate(COLUMNS)}
        gas = values["gas_type"]
        if gas is not None:
            values["gas_type"] = _GAS_TYPES.get(gas.upper() if gas.isascii() else gas)
            if values["gas_type"] is None:
                errors.append(
                    RowError(row_no, _LABEL["gas_type"], f"燃气类型“{gas}”无效（应为天然气/NG或液化石油气/LPG）")
                )
                values["gas_type"] = ""
        connected = values["gas_connected_on"]
        if connected is not None:
            values["gas_connected_on"] = _parse_date(connected)
            if values["gas_connected_on"] is None:
                errors.append(RowError(row_no, _LABEL["gas_connected_on"], f"日期“{connected}”无效（应为YYYY-MM-DD）"))
        records.append((row_no, *(values[key] for key, _ in COLUMNS)))
    return records, errors


_STAGE = """
CREATE TEMP TABLE roster_stage (
    row_no int, community_code text, building text, unit text, room text, gas_type text, supplier text,
    resident_name text, resident_phone text, gas_connected_on date
) ON COMMIT DROP
"""

# Set-based validation of the staged rows; every check yields (row_no, column key, message).
_VALIDATE = """
WITH keyed AS (
    SELECT s.*, CASE WHEN s.community_code IS NOT NULL AND s.building IS NOT NULL AND s.unit IS NOT NULL
                          AND s.room IS NOT NULL
                     THEN min(s.row_no) OVER (PARTITION BY s.community_code, s.building, s.unit, s.room) END
                AS first_row
    FROM roster_stage s
)
SELECT k.row_no, m.col, m.msg
FROM keyed k
LEFT JOIN community c ON c.code = k.community_code
CROSS JOIN LATERAL (VALUES
    ('community_code', CASE WHEN k.community_code IS NOT NULL AND c.code IS NULL
                            THEN '未知社区代码“' || k.community_code || '”' END),
    ('community_code', CASE WHEN $1::text IS NOT NULL AND k.community_code IS NOT NULL AND k.community_code <> $1
                            THEN '该户属于社区' || k.community_code || '，不属于本批次社区' || $1 END),
    ('resident_phone', CASE WHEN k.resident_phone !~ '^1[3-9][0-9]{9}$'
                            THEN '手机号“' || k.resident_phone || '”格式错误（应为11位手机号）' END),
    ('building', CASE WHEN k.first_row <> k.row_no
                      THEN '重复住户：与第' || k.first_row || '行是同一户（社区、楼号、单元、房号相同）' END)
) AS m(col, msg)
WHERE m.msg IS NOT NULL
"""

_MISSING = (
    "SELECT s.row_no, m.col FROM roster_stage s CROSS JOIN LATERAL (VALUES "
    + ", ".join(f"('{key}', s.{key})" for key in REQUIRED)
    + ") AS m(col, value) WHERE m.value IS NULL OR btrim(m.value) = ''"
)

_UPSERT = """
WITH changed AS (
    INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name, resident_phone,
                           gas_connected_on)
    SELECT community_code, building, unit, room, gas_type, supplier, resident_name, resident_phone, gas_connected_on
    FROM roster_stage ORDER BY row_no
    ON CONFLICT (community_code, building, unit, room) DO UPDATE
        SET gas_type = EXCLUDED.gas_type, supplier = EXCLUDED.supplier, resident_name = EXCLUDED.resident_name,
            resident_phone = EXCLUDED.resident_phone,
            gas_connected_on = coalesce(EXCLUDED.gas_connected_on, household.gas_connected_on)
        WHERE (household.gas_type, household.supplier, household.resident_name, household.resident_phone,
               household.gas_connected_on)
              IS DISTINCT FROM
              (EXCLUDED.gas_type, EXCLUDED.supplier, EXCLUDED.resident_name, EXCLUDED.resident_phone,
               coalesce(EXCLUDED.gas_connected_on, household.gas_connected_on))
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated FROM changed
"""


def due_date(period: date) -> date:
    """The day a month's batch is due (the 10th of that month)."""
    return period.replace(day=DUE_DAY)


async def import_roster(
    conn: Conn,
    *,
    parsed: ParsedRoster,
    filename: str,
    period: date,
    actor: str,
    community_code: str | None = None,
    today: date,
    validate_only: bool = False,
) -> ImportResult:
    """Validate and commit a roster batch as one transaction, or commit nothing and report every bad row.

    Args:
        conn: A connection not inside a transaction of the caller's.
        parsed: The file as read by `parse_roster`.
        filename: Original file name, kept with the batch.
        period: The month the batch is for (any day of it).
        actor: Who imports it (audit form, ``user:<name>``).
        community_code: The submitting community; rows of other communities are errors. None: any.
        today: Today in China Standard Time, to tell whether the batch came in after the 10th.
        validate_only: Check every row but commit nothing, even if all are good.
    """
    period = period.replace(day=1)
    late = today > due_date(period)
    existing = await conn.fetchrow(
        "SELECT id, row_count, community_code FROM roster_batch WHERE file_sha256 = $1", parsed.sha256
    )
    if existing is not None and (community_code is None or existing["community_code"] == community_code):
        return ImportResult(existing["id"], True, existing["row_count"], 0, 0, existing["row_count"], late, ())
    records, errors = _stage_records(parsed.rows)
    if not records:
        return ImportResult(None, False, 0, 0, 0, 0, late, (RowError(1, "", "文件中没有住户行"),))
    async with conn.transaction():
        await conn.execute(_STAGE)
        await conn.copy_records_to_table(
            "roster_stage", records=records, columns=["row_no", *(key for key, _ in COLUMNS)]
        )
        # Temporary tables have no statistics until analysed; without them the joins below plan badly.
        await conn.execute("ANALYZE roster_stage")
        bad_gas_rows = {e.row for e in errors if e.column == _LABEL["gas_type"]}
        errors.extend(
            RowError(r["row_no"], _LABEL[r["col"]], f"缺少必填项“{_LABEL[r['col']]}”")
            for r in await conn.fetch(_MISSING)
            if not (r["col"] == "gas_type" and r["row_no"] in bad_gas_rows)  # reported as an invalid gas type
        )
        for r in await conn.fetch(_VALIDATE, community_code):
            errors.append(RowError(r["row_no"], _LABEL[r["col"]], r["msg"]))
        if errors or validate_only or existing is not None:
            # A file imported before (by another submitter) that is valid for this one too changes nothing.
            # Leaving the block by raising rolls back; nothing of this batch stays.
            raise _Rejected(
                sorted(errors, key=lambda e: (e.row, HEADERS.index(e.column) if e.column in HEADERS else -1))
            )
        counts = await conn.fetchrow(_UPSERT)
        assert counts is not None  # an aggregate always returns one row
        try:
            batch_id: int = await conn.fetchval(
                """
            INSERT INTO roster_batch (community_code, period, due_on, file_sha256, filename, row_count, inserted,
                                      updated, unchanged, recorded_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id
            """,
                community_code,
                period,
                due_date(period),
                parsed.sha256,
                filename,
                len(records),
                counts["inserted"],
                counts["updated"],
                len(records) - counts["inserted"] - counts["updated"],
                actor,
            )
        except asyncpg.UniqueViolationError:
            # The same file was committed concurrently by another request: this one changes nothing.
            raise _Rejected([]) from None
        await conn.execute(
            """
            INSERT INTO roster_entry (batch_id, row_no, household_id)
            SELECT $1, s.row_no, h.id FROM roster_stage s
            JOIN household h ON (h.community_code, h.building, h.unit, h.room)
                              = (s.community_code::char(12), s.building, s.unit, s.room)
            """,
            batch_id,
        )
    _LOGGER.info(
        "roster batch %d: %d rows, %d new, %d updated", batch_id, len(records), counts["inserted"], counts["updated"]
    )
    return ImportResult(
        batch_id,
        False,
        len(records),
        counts["inserted"],
        counts["updated"],
        len(records) - counts["inserted"] - counts["updated"],
        late,
        (),
    )


class _Rejected(Exception):
    """Internal: carries the errors out of the transaction so that it rolls back."""

    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} roster errors")
        self.errors = errors


async def import_roster_checked(
    conn: Conn,
    *,
    parsed: ParsedRoster,
    filename: str,
    period: date,
    actor: str,
    community_code: str | None = None,
    today: date,
    validate_only: bool = False,
) -> ImportResult:
    """`import_roster`, with a rejected batch returned as a result carrying its errors instead of raised."""
    try:
        return await import_roster(
            conn,
            parsed=parsed,
            filename=filename,
            period=period,
            actor=actor,
            community_code=community_code,
            today=today,
            validate_only=validate_only,
        )
    except _Rejected as rejected:
        late = today > due_date(period.replace(day=1))
        if not rejected.errors and not validate_only:
            existing = await conn.fetchrow(
                "SELECT id, row_count FROM roster_batch WHERE file_sha256 = $1", parsed.sha256
            )
            if existing is not None:
                return ImportResult(existing["id"], True, existing["row_count"], 0, 0, existing["row_count"], late, ())
        return ImportResult(None, False, len(parsed.rows), 0, 0, 0, late, tuple(rejected.errors))


_ERROR_FILL = PatternFill(start_color="FFC7CE", end_color="FFC7CE", fill_type="solid")


def error_report_xlsx(parsed: ParsedRoster, errors: Sequence[RowError]) -> bytes:
    """The submitted rows with an extra 错误说明 column and every bad cell marked red."""
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "花名册错误报告"
    sheet.append([*HEADERS, "错误说明"])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    by_row: dict[int, list[RowError]] = {}
    for error in errors:
        by_row.setdefault(error.row, []).append(error)
    for offset, cells in enumerate(parsed.rows):
        row_no = offset + 2
        row_errors = by_row.get(row_no, [])
        sheet.append([*cells, "；".join(e.message for e in row_errors)])
        for error in row_errors:
            if error.column in HEADERS:
                sheet.cell(row=row_no, column=HEADERS.index(error.column) + 1).fill = _ERROR_FILL
        if row_errors:
            sheet.cell(row=row_no, column=len(HEADERS) + 1).fill = _ERROR_FILL
    for error in by_row.get(1, []):
        sheet.cell(row=1, column=len(HEADERS) + 1, value=error.message).fill = _ERROR_FILL
    return _save(workbook)


def _save(workbook: Workbook) -> bytes:
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


async def export_roster(conn: Conn, *, community_code: str | None = None) -> tuple[bytes, int]:
    """Households as a roster XLSX in the import's shape (same headers), and how many rows it holds."""
    rows = await conn.fetch(
        """
        SELECT community_code, building, unit, room, CASE gas_type WHEN 'NG' THEN '天然气' ELSE '液化石油气' END,
               supplier, coalesce(resident_name, ''), coalesce(resident_phone, ''),
               coalesce(to_char(gas_connected_on, 'YYYY-MM-DD'), '')
        FROM household WHERE $1::text IS NULL OR community_code = $1
        ORDER BY community_code, building, unit, room
        """,
        community_code,
    )
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("花名册")
    sheet.append(list(HEADERS))
    for row in rows:
        sheet.append([str(v) for v in row])
    return _save(workbook), len(rows)
