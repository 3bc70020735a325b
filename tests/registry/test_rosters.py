"""Rosters (花名册): all-or-nothing import with a row-by-row report, idempotent re-import, XLSX export."""

from __future__ import annotations

import csv
import io
from datetime import date

import asyncpg
import pytest
from openpyxl import Workbook, load_workbook

from registry.rosters import (
    HEADERS,
    RosterFileError,
    error_report_xlsx,
    export_roster,
    import_roster_checked,
    parse_roster,
)

TOWN = "150626100000"  # 嘎鲁图镇 (verified NBS code)
RURAL_TOWN = "150626200000"  # 苏力德苏木 (verified NBS code)
COMMUNITY = "150626100007"  # 文苑社区 (synthetic code)
OTHER_COMMUNITY = "150626100005"  # 南丁社区 (synthetic code)
RURAL_COMMUNITY = "150626200201"  # 陶利 (synthetic code)
TODAY = date(2024, 5, 8)
PERIOD = date(2024, 5, 1)


async def add_places(db: asyncpg.Connection) -> None:
    """Two towns and three communities (synthetic community codes)."""
    await db.executemany(
        "INSERT INTO town (code, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(TOWN, "嘎鲁图镇"), (RURAL_TOWN, "苏力德苏木")],
    )
    await db.executemany(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, $3, true) ON CONFLICT DO NOTHING",
        [(COMMUNITY, TOWN, "文苑社区"), (OTHER_COMMUNITY, TOWN, "南丁社区"), (RURAL_COMMUNITY, RURAL_TOWN, "陶利社区")],
    )


def roster_rows(n: int, *, community: str = COMMUNITY, gas: str = "天然气", start: int = 0) -> list[list[str]]:
    """``n`` valid roster rows in file order."""
    supplier = "乌审中燃" if gas == "天然气" else "荣昌"
    return [
        [
            community,
            str(1 + i // 100),
            str(1 + (i // 10) % 10),
            str(101 + i % 10),
            gas,
            supplier,
            f"住户{i}",
            f"139{i:08d}",
            "2020-06-01",
        ]
        for i in range(start, start + n)
    ]


def as_csv(rows: list[list[str]]) -> bytes:
    """A UTF-8 CSV with the Chinese headers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADERS)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def as_xlsx(rows: list[list[str]]) -> bytes:
    """An XLSX with the Chinese headers."""
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(list(HEADERS))
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


async def import_rows(
    db: asyncpg.Connection, rows: list[list[str]], *, xlsx: bool = False, community: str | None = None
):  # type: ignore[no-untyped-def]
    """Import ``rows`` as a CSV (or XLSX) batch for May 2024."""
    data = as_xlsx(rows) if xlsx else as_csv(rows)
    name = "may.xlsx" if xlsx else "may.csv"
    return await import_roster_checked(
        db,
        parsed=parse_roster(data, name),
        filename=name,
        period=PERIOD,
        actor="user:test",
        community_code=community,
        today=TODAY,
    )


async def test_valid_roster_commits_every_row(db: asyncpg.Connection) -> None:
    """A clean batch creates its households and a batch record linking every row."""
    await add_places(db)
    result = await import_rows(db, roster_rows(25), community=COMMUNITY)
    assert result.committed and result.errors == ()
    assert (result.inserted, result.updated, result.unchanged) == (25, 0, 0)
    assert not result.late
    assert await db.fetchval("SELECT count(*) FROM household") == 25
    assert await db.fetchval("SELECT count(*) FROM roster_entry WHERE batch_id = $1", result.batch_id) == 25
    row = await db.fetchrow("SELECT gas_type, supplier, gas_connected_on FROM household WHERE resident_name = '住户3'")
    assert dict(row) == {"gas_type": "NG", "supplier": "乌审中燃", "gas_connected_on": date(2020, 6, 1)}


async def test_one_bad_row_commits_nothing_and_is_reported(db: asyncpg.Connection) -> None:
    """A batch with a single bad phone number commits no row at all and names that row and column."""
    await add_places(db)
    rows = roster_rows(10)
    rows[6][7] = "1391234"  # too short
    result = await import_rows(db, rows)
    assert not result.committed
    assert [(e.row, e.column) for e in result.errors] == [(8, "联系电话")]
    assert "格式错误" in result.errors[0].message
    assert await db.fetchval("SELECT count(*) FROM household") == 0
    assert await db.fetchval("SELECT count(*) FROM roster_batch") == 0


async def test_every_kind_of_error_is_reported_row_by_row(db: asyncpg.Connection) -> None:
    """Unknown community, bad phone, duplicate household, missing field and bad gas type, each on its row."""
    await add_places(db)
    rows = roster_rows(8)
    rows[0][0] = "150626100099"  # unknown community
    rows[2][7] = "23900000000"  # not a mobile number
    rows[5] = list(rows[4])  # duplicate of the row above
    rows[5][6] = "别人"
    rows[6][6] = ""  # missing resident name
    rows[7][4] = "煤气"  # unknown gas type
    result = await import_rows(db, rows)
    assert not result.committed
    got = {(e.row, e.column) for e in result.errors}
    assert got == {(2, "社区代码"), (4, "联系电话"), (7, "楼号"), (8, "户主姓名"), (9, "燃气类型")}
    duplicate = next(e for e in result.errors if e.row == 7)
    assert "第6行" in duplicate.message
    assert await db.fetchval("SELECT count(*) FROM household") == 0


async def test_rows_of_another_community_are_refused(db: asyncpg.Connection) -> None:
    """A community's batch may only contain its own households."""
    await add_places(db)
    rows = roster_rows(3) + roster_rows(1, community=OTHER_COMMUNITY, start=50)
    result = await import_rows(db, rows, community=COMMUNITY)
    assert [(e.row, e.column) for e in result.errors] == [(5, "社区代码")]


async def test_reimporting_the_same_file_changes_nothing(db: asyncpg.Connection) -> None:
    """The same file again is recognised by its hash; the same rows in another file are all unchanged."""
    await add_places(db)
    rows = roster_rows(12)
    first = await import_rows(db, rows)
    again = await import_rows(db, rows)
    assert again.already_imported and again.batch_id == first.batch_id
    assert await db.fetchval("SELECT count(*) FROM roster_batch") == 1
    as_xlsx_file = await import_rows(db, rows, xlsx=True)
    assert as_xlsx_file.committed and not as_xlsx_file.already_imported
    assert (as_xlsx_file.inserted, as_xlsx_file.updated, as_xlsx_file.unchanged) == (0, 0, 12)
    assert await db.fetchval("SELECT count(*) FROM household") == 12


async def test_changed_rows_update_households(db: asyncpg.Connection) -> None:
    """A later batch with a new phone number for a known household updates it in place."""
    await add_places(db)
    rows = roster_rows(3)
    await import_rows(db, rows)
    rows[1][7] = "13800000000"
    result = await import_rows(db, rows, xlsx=True)
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 2)
    assert await db.fetchval("SELECT count(*) FROM household WHERE resident_phone = '13800000000'") == 1


async def test_error_report_xlsx_marks_the_bad_cells(db: asyncpg.Connection) -> None:
    """The downloadable report has every submitted row, an error column, and the bad cell filled red."""
    await add_places(db)
    rows = roster_rows(4)
    rows[2][7] = "abc"
    data = as_csv(rows)
    parsed = parse_roster(data, "x.csv")
    result = await import_rows(db, rows)
    report = load_workbook(io.BytesIO(error_report_xlsx(parsed, result.errors)))
    sheet = report.active
    assert sheet is not None
    assert sheet.max_row == 5
    assert sheet.cell(row=1, column=len(HEADERS) + 1).value == "错误说明"
    bad = sheet.cell(row=4, column=HEADERS.index("联系电话") + 1)
    assert bad.value == "abc"
    assert bad.fill.fgColor.rgb.endswith("FFC7CE")
    assert "格式错误" in sheet.cell(row=4, column=len(HEADERS) + 1).value
    assert sheet.cell(row=3, column=len(HEADERS) + 1).value in (None, "")


async def test_late_batch_is_flagged(db: asyncpg.Connection) -> None:
    """A batch arriving after the 10th of its month is recorded as late."""
    await add_places(db)
    result = await import_roster_checked(
        db,
        parsed=parse_roster(as_csv(roster_rows(1)), "a.csv"),
        filename="a.csv",
        period=PERIOD,
        actor="user:test",
        today=date(2024, 5, 11),
    )
    assert result.committed and result.late


def test_unreadable_files_are_clear_errors() -> None:
    """A file without the roster's headers, or an empty file, is a RosterFileError naming the problem."""
    with pytest.raises(RosterFileError, match="缺少表头"):
        parse_roster("名字,电话\n张三,13900000000\n".encode(), "x.csv")
    with pytest.raises(RosterFileError, match="文件为空"):
        parse_roster(b"", "x.csv")
    with pytest.raises(RosterFileError, match="XLSX"):
        parse_roster(b"PK\x03\x04 not really a zip", "x.xlsx")


def test_gbk_csv_is_read() -> None:
    """Excel on a Chinese Windows saves CSV as GBK; it is read too."""
    parsed = parse_roster(as_csv(roster_rows(2)).decode("utf-8").encode("gb18030"), "gbk.csv")
    assert parsed.rows[0][4] == "天然气"


async def test_export_has_the_import_shape_and_reimports_unchanged(db: asyncpg.Connection) -> None:
    """Exported XLSX has the same headers; importing it back changes nothing."""
    await add_places(db)
    await import_rows(db, roster_rows(7) + roster_rows(3, community=RURAL_COMMUNITY, gas="液化石油气", start=100))
    data, count = await export_roster(db)
    assert count == 10
    sheet = load_workbook(io.BytesIO(data)).active
    assert sheet is not None
    assert tuple(c.value for c in sheet[1]) == HEADERS
    result = await import_roster_checked(
        db,
        parsed=parse_roster(data, "export.xlsx"),
        filename="export.xlsx",
        period=PERIOD,
        actor="user:test",
        today=TODAY,
    )
    assert result.committed and (result.inserted, result.updated, result.unchanged) == (0, 0, 10)
    _, n = await export_roster(db, community_code=RURAL_COMMUNITY)
    assert n == 3


async def test_county_scale_roster_imports_in_one_batch(db: asyncpg.Connection) -> None:
    """A 40,000-household roster (36,000 NG + 4,000 LPG) imports in one batch; speed is in the benchmarks."""
    await add_places(db)
    rows = roster_rows(36000) + roster_rows(4000, community=RURAL_COMMUNITY, gas="液化石油气", start=36000)
    result = await import_rows(db, rows, xlsx=False)
    assert result.committed and result.inserted == 40000
    counts = dict(await db.fetch("SELECT gas_type, count(*) FROM household GROUP BY gas_type"))
    assert counts == {"NG": 36000, "LPG": 4000}
