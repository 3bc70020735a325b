"""Confirmation slips (燃气技防设施安装确认单): five signatures, the charge they fix, verification, print.

A slip is created for a household once its kit is fitted; it fixes the household's charge from the
price in force on the installation date. Each of the five parties signs once (name, role, server
time); a slip lacking any signature is refused for verification (here and by a database trigger),
so it can never reach a settlement.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from importlib import resources
from typing import Any

import asyncpg
from jinja2 import Environment, FileSystemLoader, select_autoescape

from registry.contracts import Eligibility, eligibility
from registry.deps import CHINA_STANDARD_TIME
from registry.finance import Split, format_yuan, price_in_force, split_price
from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)

_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud over the phone
CODE_LENGTH = 10


class SignatureRole(StrEnum):
    """The five parties who sign a slip (实施方案 七)."""

    COMMUNITY_SECRETARY = "community_secretary"
    VILLAGE_SECRETARY = "village_secretary"
    GRID_WORKER = "grid_worker"
    INSTALLER = "installer"
    RESIDENT = "resident"


ROLE_LABELS: dict[SignatureRole, str] = {
    SignatureRole.COMMUNITY_SECRETARY: "社区书记",
    SignatureRole.VILLAGE_SECRETARY: "村支书",
    SignatureRole.GRID_WORKER: "网格员",
    SignatureRole.INSTALLER: "燃气公司安装人员",
    SignatureRole.RESIDENT: "居民",
}


#: Advisory lock key that serialises verification runs (any constant unique to this purpose).
_VERIFY_LOCK = 0x5F11_0005


class SlipError(Exception):
    """A slip operation is refused (unknown, duplicate, already signed, already verified)."""


class IncompleteSlipError(SlipError):
    """The slip lacks signatures and cannot be verified or paid."""

    def __init__(self, slip_id: int, missing: Sequence[SignatureRole]) -> None:
        labels = "、".join(ROLE_LABELS[r] for r in missing)
        super().__init__(f"确认单{slip_id}缺少签字：{labels}")
        self.slip_id = slip_id
        self.missing = tuple(missing)


def missing_signatures(signed: Sequence[str]) -> list[SignatureRole]:
    """The roles that have not signed, in the slip's order."""
    have = set(signed)
    return [role for role in SignatureRole if role.value not in have]


def new_verify_code() -> str:
    """A random 10-character verification code printed on the slip."""
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(CODE_LENGTH))


@dataclass(frozen=True)
class Signature:
    """One party's signature: name, role and server time."""

    role: SignatureRole
    signer_name: str
    signed_at: datetime


@dataclass(frozen=True)
class Slip:
    """A confirmation slip with its household, charge and signatures."""

    id: int
    household_id: int
    verify_code: str
    installed_on: date
    month: date
    recorded_at: datetime
    verified_at: datetime | None
    gas_type: str
    supplier: str
    town_name: str
    community_code: str
    community_name: str
    address: str
    resident_name: str | None
    charge: Split
    resident_pays_all: bool
    signatures: tuple[Signature, ...]

    @property
    def missing(self) -> list[SignatureRole]:
        """Roles still to sign."""
        return missing_signatures([s.role.value for s in self.signatures])

    @property
    def complete(self) -> bool:
        """All five parties have signed."""
        return not self.missing


async def create_slip(conn: Conn, *, household_id: int, installed_on: date, actor: str, today: date) -> Slip:
    """Open the household's slip and fix its charge; SlipError if it has one or does not exist."""
    async with conn.transaction():
        household = await conn.fetchrow(
            "SELECT id, gas_type, gas_connected_on FROM household WHERE id = $1", household_id
        )
        if household is None:
            raise SlipError(f"household {household_id} not found")
        price = await price_in_force(conn, gas_type=household["gas_type"], on=installed_on)
        pays_all = (
            eligibility(gas_connected_on=household["gas_connected_on"], kit_expires_on=None, today=today)
            is Eligibility.RESIDENT_PAYS_ALL
        )
        split = split_price(price, resident_pays_all=pays_all)
        try:
            slip_id = await conn.fetchval(
                "INSERT INTO confirmation_slip (household_id, installed_on, verify_code, recorded_by)"
                " VALUES ($1, $2, $3, $4) RETURNING id",
                household_id,
                installed_on,
                new_verify_code(),
                actor,
            )
        except asyncpg.UniqueViolationError as err:
            raise SlipError(f"household {household_id} already has a confirmation slip") from err
        await conn.execute(
            """
            INSERT INTO slip_charge (slip_id, household_id, gas_type, price_config_id, resident_pays_all, total_fen,
                                     company_fen, government_fen, resident_fen)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            """,
            slip_id,
            household_id,
            household["gas_type"],
            price.id,
            pays_all,
            split.total_fen,
            split.company_fen,
            split.government_fen,
            split.resident_fen,
        )
    slip = await get_slip(conn, slip_id=slip_id)
    assert slip is not None
    return slip


async def sign_slip(conn: Conn, *, slip_id: int, role: SignatureRole, signer_name: str, actor: str) -> Slip:
    """Add one party's signature (server time); SlipError if that role signed already or the slip is verified."""
    if not signer_name.strip():
        raise SlipError("签字人姓名不能为空")
    async with conn.transaction():
        state = await conn.fetchrow("SELECT verified_at FROM confirmation_slip WHERE id = $1 FOR UPDATE", slip_id)
        if state is None:
            raise SlipError(f"slip {slip_id} not found")
        if state["verified_at"] is not None:
            raise SlipError(f"slip {slip_id} is verified; signatures are closed")
        try:
            await conn.execute(
                "INSERT INTO slip_signature (slip_id, role, signer_name, recorded_by) VALUES ($1, $2, $3, $4)",
                slip_id,
                role.value,
                signer_name.strip(),
                actor,
            )
        except asyncpg.UniqueViolationError as err:
            raise SlipError(f"{ROLE_LABELS[role]}已在确认单{slip_id}上签字") from err
    slip = await get_slip(conn, slip_id=slip_id)
    assert slip is not None
    return slip


_SLIP_SQL = """
SELECT s.id, s.household_id, s.verify_code, s.installed_on, s.month, s.recorded_at, s.verified_at,
       h.gas_type, h.supplier, h.building, h.unit, h.room, h.resident_name,
       c.code AS community_code, c.name AS community_name, t.name AS town_name,
       ch.total_fen, ch.company_fen, ch.government_fen, ch.resident_fen, ch.resident_pays_all
FROM confirmation_slip s
JOIN household h ON h.id = s.household_id
JOIN community c ON c.code = h.community_code
JOIN town t ON t.code = c.town_code
JOIN slip_charge ch ON ch.slip_id = s.id
"""


async def _load(conn: Conn, row: asyncpg.Record | None) -> Slip | None:
    if row is None:
        return None
    signatures = await conn.fetch(
        "SELECT role, signer_name, recorded_at FROM slip_signature WHERE slip_id = $1", row["id"]
    )
    order = list(SignatureRole)
    sigs = sorted(
        (Signature(SignatureRole(r["role"]), r["signer_name"], r["recorded_at"]) for r in signatures),
        key=lambda s: order.index(s.role),
    )
    return Slip(
        id=row["id"],
        household_id=row["household_id"],
        verify_code=row["verify_code"],
        installed_on=row["installed_on"],
        month=row["month"],
        recorded_at=row["recorded_at"],
        verified_at=row["verified_at"],
        gas_type=row["gas_type"],
        supplier=row["supplier"],
        town_name=row["town_name"],
        community_code=row["community_code"],
        community_name=row["community_name"],
        address=f"{row['building']}号楼{row['unit']}单元{row['room']}",
        resident_name=row["resident_name"],
        charge=Split(row["total_fen"], row["company_fen"], row["government_fen"], row["resident_fen"]),
        resident_pays_all=row["resident_pays_all"],
        signatures=tuple(sigs),
    )


async def get_slip(conn: Conn, *, slip_id: int) -> Slip | None:
    """A slip by id, or None."""
    return await _load(conn, await conn.fetchrow(_SLIP_SQL + " WHERE s.id = $1", slip_id))


async def get_slip_by_code(conn: Conn, *, code: str) -> Slip | None:
    """A slip by the verification code printed on it, or None."""
    return await _load(conn, await conn.fetchrow(_SLIP_SQL + " WHERE s.verify_code = $1", code.upper()))


@dataclass(frozen=True)
class MonthVerification:
    """Outcome of a monthly verification: the run's id, the slips verified and those refused with the reason."""

    verification_id: int
    verified: tuple[int, ...]
    refused: tuple[IncompleteSlipError, ...]


async def verify_month(conn: Conn, *, month: date, actor: str, community_code: str | None = None) -> MonthVerification:
    """The housing bureau verifies a month's complete slips; incomplete ones are refused and listed."""
    month = month.replace(day=1)
    async with conn.transaction():
        # One verification at a time, so two clerks verifying the same month cannot both count a slip.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _VERIFY_LOCK)
        rows = await conn.fetch(
            """
            SELECT s.id, array_remove(array_agg(g.role), NULL) AS roles
            FROM confirmation_slip s
            JOIN household h ON h.id = s.household_id
            LEFT JOIN slip_signature g ON g.slip_id = s.id
            WHERE s.month = $1 AND s.verified_at IS NULL AND ($2::text IS NULL OR h.community_code = $2)
            GROUP BY s.id ORDER BY s.id
            """,
            month,
            community_code,
        )
        complete = [r["id"] for r in rows if not missing_signatures(r["roles"])]
        refused = [
            IncompleteSlipError(r["id"], missing_signatures(r["roles"])) for r in rows if missing_signatures(r["roles"])
        ]
        verification_id: int = await conn.fetchval(
            "INSERT INTO slip_verification (month, community_code, verified_count, refused, recorded_by)"
            " VALUES ($1, $2, $3, $4, $5) RETURNING id",
            month,
            community_code,
            len(complete),
            [{"slip_id": e.slip_id, "missing": [m.value for m in e.missing]} for e in refused],
            actor,
        )
        await conn.execute(
            "UPDATE confirmation_slip SET verification_id = $1, verified_at = now() WHERE id = ANY($2::bigint[])",
            verification_id,
            complete,
        )
    _LOGGER.info("verification %d of %s: %d verified, %d refused", verification_id, month, len(complete), len(refused))
    return MonthVerification(verification_id, tuple(complete), tuple(refused))


async def verify_slip(conn: Conn, *, slip_id: int, actor: str) -> int:
    """Verify one slip on its own; IncompleteSlipError if any signature is missing. Returns the verification id."""
    slip = await get_slip(conn, slip_id=slip_id)
    if slip is None:
        raise SlipError(f"slip {slip_id} not found")
    if slip.verified_at is not None:
        raise SlipError(f"slip {slip_id} is already verified")
    if slip.missing:
        raise IncompleteSlipError(slip_id, slip.missing)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _VERIFY_LOCK)
        if await conn.fetchval("SELECT verified_at FROM confirmation_slip WHERE id = $1", slip_id) is not None:
            raise SlipError(f"slip {slip_id} is already verified")
        verification_id: int = await conn.fetchval(
            "INSERT INTO slip_verification (month, community_code, verified_count, recorded_by)"
            " VALUES ($1, $2, 1, $3) RETURNING id",
            slip.month,
            slip.community_code,
            actor,
        )
        await conn.execute(
            "UPDATE confirmation_slip SET verification_id = $1, verified_at = now() WHERE id = $2",
            verification_id,
            slip_id,
        )
    return verification_id


# --- printing -------------------------------------------------------------------------------------------

_ENV = Environment(
    loader=FileSystemLoader(str(resources.files("registry") / "templates")),
    autoescape=select_autoescape(["html"]),
)


def _local(ts: datetime) -> str:
    return ts.astimezone(CHINA_STANDARD_TIME).strftime("%Y-%m-%d %H:%M")


def _signature_rows(slip: Slip) -> list[tuple[str, str, str]]:
    """(role label, signer name, local time) for each of the five parties, blank where unsigned."""
    signed = {s.role: s for s in slip.signatures}
    return [
        (ROLE_LABELS[role], signed[role].signer_name, _local(signed[role].signed_at))
        if role in signed
        else (ROLE_LABELS[role], "", "")
        for role in SignatureRole
    ]


def _sheet(slip: Slip, verify_url: str) -> dict[str, object]:
    return {
        "slip": slip,
        "kit": "燃气专用金属波纹管一米、燃气自闭阀、切断阀、报警器"
        if slip.gas_type == "NG"
        else "液化石油气调压阀、金属包覆管",
        "gas_label": "天然气" if slip.gas_type == "NG" else "液化石油气",
        "yuan": format_yuan,
        "rows": _signature_rows(slip),
        "verify_url": verify_url,
        "status": "已核验"
        if slip.verified_at
        else ("签字齐全，待核验" if slip.complete else "签字未齐，不能核验或付款"),
    }


def render_html(slip: Slip, *, verify_url: str) -> str:
    """The printable slip as an HTML page in Chinese, with a QR code linking to ``verify_url``."""
    import segno

    qr_svg = segno.make(verify_url, error="m").svg_inline(scale=3)
    return _ENV.get_template("slip.html").render(**_sheet(slip, verify_url), qr_svg=qr_svg)


#: CJK fonts embedded (subset) into the slip PDF when installed; Debian packages fonts-wqy-zenhei /
#: fonts-wqy-microhei. (fonts-noto-cjk is no use: its outlines are PostScript/CFF, which ReportLab cannot embed.)
CJK_FONT_FILES: tuple[str, ...] = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
_EMBEDDED_FONT = "GasGuardCJK"
_CID_FONT = "STSong-Light"


def _pdf_font() -> str:
    """The font of the slip PDF, chosen in this one place.

    An installed CJK TrueType font is embedded (subset), so the PDF shows its Chinese text in any
    viewer, LibreOffice included. Without one, ReportLab's built-in CID font STSong-Light is used: it
    needs no file but is not embedded, so viewers without Adobe's Chinese font pack show no text.
    """
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfbase.ttfonts import TTFError, TTFont

    registered = pdfmetrics.getRegisteredFontNames()
    if _EMBEDDED_FONT in registered:
        return _EMBEDDED_FONT
    for path in CJK_FONT_FILES:
        if os.path.exists(path):
            try:
                pdfmetrics.registerFont(TTFont(_EMBEDDED_FONT, path, subfontIndex=0))
            except TTFError as err:  # a file ReportLab cannot embed: try the next one
                _LOGGER.warning("CJK font %s not usable for slip PDFs: %s", path, err)
                continue
            return _EMBEDDED_FONT
    if _CID_FONT not in registered:
        _LOGGER.warning(
            "no CJK font file found (%s); slip PDFs use the non-embedded CID font %s", CJK_FONT_FILES, _CID_FONT
        )
        pdfmetrics.registerFont(UnicodeCIDFont(_CID_FONT))
    return _CID_FONT


def render_pdf(slip: Slip, *, verify_url: str) -> bytes:
    """The printable slip as an A4 PDF in Chinese (ReportLab; font from `_pdf_font`)."""
    from reportlab.graphics.barcode.qr import QrCodeWidget
    from reportlab.graphics.shapes import Drawing
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    font = _pdf_font()
    sheet = _sheet(slip, verify_url)
    sheet_rows = _signature_rows(slip)
    title = ParagraphStyle("title", fontName=font, fontSize=18, leading=24, alignment=1)
    body = ParagraphStyle("body", fontName=font, fontSize=10.5, leading=15)
    small = ParagraphStyle("small", fontName=font, fontSize=8.5, leading=11)
    charge = slip.charge
    info: list[list[Any]] = [
        ["确认单编号", f"{slip.id:08d}", "核验码", slip.verify_code],
        ["苏木镇", slip.town_name, "社区", f"{slip.community_name}（{slip.community_code}）"],
        ["住址", slip.address, "户主", slip.resident_name or ""],
        ["燃气类型", sheet["gas_label"], "供气单位", slip.supplier],
        ["安装日期", slip.installed_on.isoformat(), "状态", sheet["status"]],
        ["安装内容", Paragraph(str(sheet["kit"]), body), "", ""],
        ["费用（元）", f"合计 {format_yuan(charge.total_fen)}", "燃气公司", format_yuan(charge.company_fen)],
        ["", f"政府 {format_yuan(charge.government_fen)}", "居民", format_yuan(charge.resident_fen)],
    ]
    grid = TableStyle(
        [
            ("FONT", (0, 0), (-1, -1), font, 10.5),
            ("GRID", (0, 0), (-1, -1), 0.6, colors.black),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("BACKGROUND", (0, 0), (0, -1), colors.HexColor("#EEEEEE")),
            ("SPAN", (1, 5), (3, 5)),
            ("SPAN", (0, 6), (0, 7)),
        ]
    )
    info_table = Table(info, colWidths=[25 * mm, 60 * mm, 25 * mm, 60 * mm], rowHeights=None)
    info_table.setStyle(grid)
    sign_rows: list[list[Any]] = [["签字方", "姓名", "签字时间（北京时间）"], *[list(r) for r in sheet_rows]]
    sign_table = Table(sign_rows, colWidths=[50 * mm, 55 * mm, 65 * mm], rowHeights=[8 * mm] + [11 * mm] * 5)
    sign_table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, -1), font, 10.5),
                ("GRID", (0, 0), (-1, -1), 0.6, colors.black),
                ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#EEEEEE")),
            ]
        )
    )
    qr = QrCodeWidget(verify_url)
    x0, y0, x1, y1 = qr.getBounds()
    size = 28 * mm
    drawing = Drawing(size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0])
    drawing.add(qr)
    footer = Table(
        [
            [
                drawing,
                Paragraph(
                    f"扫码或访问 {verify_url} 核对本确认单（核验码 {slip.verify_code}）。<br/>"
                    "本单为政府出资部分结算依据（乌政办发〔2024〕9号 七、资金结算），"
                    "五方签字齐全后方可核验、付款。",
                    small,
                ),
            ]
        ],
        colWidths=[32 * mm, 138 * mm],
    )
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=20 * mm,
        rightMargin=20 * mm,
        topMargin=18 * mm,
        bottomMargin=18 * mm,
        title=f"燃气技防设施安装确认单 {slip.verify_code}",
        author="乌审旗燃气技防设施安装项目",
    )
    doc.build(
        [
            Paragraph("乌审旗燃气技防设施安装确认单", title),
            Spacer(1, 6 * mm),
            info_table,
            Spacer(1, 6 * mm),
            sign_table,
            Spacer(1, 6 * mm),
            footer,
        ]
    )
    return buffer.getvalue()
