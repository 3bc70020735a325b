"""The slip PDF and the XLSX exports open in LibreOffice (Debian: libreoffice-calc, libreoffice-draw)."""

from __future__ import annotations

import asyncio
import csv
import re
import shutil
import zipfile
from datetime import date
from pathlib import Path

import asyncpg
import pytest

from registry.rosters import export_roster, parse_roster
from registry.settlement import quarterly_statement, statement_xlsx
from registry.slips import get_slip, render_pdf, verify_month
from tests.registry.test_rosters import COMMUNITY, RURAL_COMMUNITY, add_places, import_rows, roster_rows
from tests.registry.test_slips import add_household, signed_slip


async def _convert(source: Path, target: str, tmp_path: Path) -> Path:
    """Run ``libreoffice --headless --convert-to target`` on ``source``; returns the output file."""
    binary = shutil.which("libreoffice") or shutil.which("soffice")
    if binary is None:
        pytest.fail(
            "LibreOffice is not installed: apt-get install -y libreoffice-calc libreoffice-draw fonts-wqy-zenhei"
        )
    out = tmp_path / "out"
    process = await asyncio.create_subprocess_exec(
        binary,
        # A profile of its own, so parallel runs and a desktop instance never share a lock.
        f"-env:UserInstallation=file://{tmp_path / 'lo-profile'}",
        "--headless",
        "--convert-to",
        target,
        "--outdir",
        str(out),
        str(source),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=100)
    extension = target.split(":")[0]
    result = out / f"{source.stem}.{extension}"
    assert process.returncode == 0 and result.exists(), output.decode(errors="replace")
    return result


def _csv(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text(encoding="utf-8").splitlines()))


UTF8_CSV = "csv:Text - txt - csv (StarCalc):44,34,76"


async def test_slip_pdf_opens_in_libreoffice_with_its_chinese_text(db: asyncpg.Connection, tmp_path: Path) -> None:
    """LibreOffice Draw imports the slip PDF and finds the title, the code, the parties and the amounts as text."""
    await add_places(db)
    slip_id = await signed_slip(db, await add_household(db, room="101"))
    slip = await get_slip(db, slip_id=slip_id)
    assert slip is not None
    pdf = tmp_path / "slip.pdf"
    pdf.write_bytes(render_pdf(slip, verify_url=f"https://gg.example/slips/check/{slip.verify_code}"))
    odg = await _convert(pdf, "odg", tmp_path)
    content = zipfile.ZipFile(odg).read("content.xml").decode("utf-8")
    text = "".join(re.findall(r">([^<>]+)<", content))
    for expected in (
        "乌审旗燃气技防设施安装确认单",
        slip.verify_code,
        "社区书记",
        "村支书",
        "网格员",
        "燕奕景",
        "470.00",
        "141.00",
    ):
        assert expected in text


async def test_xlsx_exports_open_in_libreoffice(db: asyncpg.Connection, tmp_path: Path) -> None:
    """LibreOffice Calc reads the roster export and the quarterly statement, headers and totals intact."""
    await add_places(db)
    await import_rows(db, roster_rows(3) + roster_rows(2, community=RURAL_COMMUNITY, gas="液化石油气", start=50))
    roster, _ = await export_roster(db)
    roster_path = tmp_path / "roster.xlsx"
    roster_path.write_bytes(roster)
    rows = _csv(await _convert(roster_path, UTF8_CSV, tmp_path))
    assert rows[0][:4] == ["社区代码", "楼号", "单元", "房号"]
    assert len(rows) == 6 and {r[4] for r in rows[1:]} == {"天然气", "液化石油气"}
    assert parse_roster(roster, "roster.xlsx").rows[0][0] in {COMMUNITY, RURAL_COMMUNITY}

    households = [r["id"] for r in await db.fetch("SELECT id FROM household ORDER BY id")]
    for household in households:
        await signed_slip(db, household, installed_on=date(2024, 5, 6))
    await verify_month(db, month=date(2024, 5, 1), actor="user:bureau")
    statement = await quarterly_statement(db, year=2024, quarter=2)
    statement_path = tmp_path / "statement.xlsx"
    statement_path.write_bytes(await statement_xlsx(db, statement))
    sheet = _csv(await _convert(statement_path, UTF8_CSV, tmp_path))
    assert sheet[0][0].startswith("乌审旗燃气技防设施政府出资部分结算表")
    assert sheet[-1][0] == "合计" and sheet[-1][-1] == str(3 * 14100 + 2 * 6690)
