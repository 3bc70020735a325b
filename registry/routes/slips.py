"""Confirmation-slip routes: open, sign, read, print (HTML/PDF), verify, and the public code check."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from registry import audit
from registry.auth import Role, User, authorize_household, require_roles
from registry.deps import BIGINT_MAX, BigIntId, ConnDep, TodayDep
from registry.finance import FinanceError
from registry.slips import (
    IncompleteSlipError,
    SignatureRole,
    Slip,
    SlipError,
    create_slip,
    get_slip,
    get_slip_by_code,
    render_html,
    render_pdf,
    sign_slip,
    verify_slip,
)

router = APIRouter(prefix="/slips", tags=["slips 确认单"])

SlipIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Slip id.")]
Signer = Annotated[User, Depends(require_roles(Role.ADMIN, Role.INSTALLER, Role.COMMUNITY_STAFF))]
Reader = Annotated[
    User,
    Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU, Role.COMMUNITY_STAFF, Role.INSTALLER, Role.DUTY_OPERATOR)),
]
Verifier = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU))]


class SlipCreate(BaseModel):
    """Open a slip for a household whose kit has been fitted."""

    model_config = ConfigDict(extra="forbid")
    household_id: BigIntId
    installed_on: date


class SignatureCreate(BaseModel):
    """One party signs: role and name; the server records the time."""

    model_config = ConfigDict(extra="forbid")
    role: SignatureRole
    signer_name: str = Field(min_length=1, max_length=64)


class SignaturePublic(BaseModel):
    """A signature as recorded."""

    model_config = ConfigDict(frozen=True)
    role: SignatureRole
    signer_name: str
    signed_at: datetime


class SlipPublic(BaseModel):
    """A slip with its charge (fen) and signatures."""

    model_config = ConfigDict(frozen=True)
    id: int
    household_id: int
    verify_code: str
    installed_on: date
    month: date
    gas_type: str
    community_code: str
    total_fen: int
    company_fen: int
    government_fen: int
    resident_fen: int
    resident_pays_all: bool
    signatures: list[SignaturePublic]
    missing: list[SignatureRole]
    complete: bool
    verified_at: datetime | None

    @classmethod
    def of(cls, slip: Slip) -> SlipPublic:
        """From the domain slip."""
        return cls(
            id=slip.id,
            household_id=slip.household_id,
            verify_code=slip.verify_code,
            installed_on=slip.installed_on,
            month=slip.month,
            gas_type=slip.gas_type,
            community_code=slip.community_code,
            total_fen=slip.charge.total_fen,
            company_fen=slip.charge.company_fen,
            government_fen=slip.charge.government_fen,
            resident_fen=slip.charge.resident_fen,
            resident_pays_all=slip.resident_pays_all,
            signatures=[
                SignaturePublic(role=s.role, signer_name=s.signer_name, signed_at=s.signed_at) for s in slip.signatures
            ],
            missing=slip.missing,
            complete=slip.complete,
            verified_at=slip.verified_at,
        )


class SlipCheckPublic(BaseModel):
    """What anyone holding the printed code may see: no names, no address."""

    model_config = ConfigDict(frozen=True)
    verify_code: str
    community_name: str
    installed_on: date
    gas_type: str
    signatures: int
    complete: bool
    verified: bool


async def _slip_for(conn: ConnDep, user: User, slip_id: int) -> Slip:
    slip = await get_slip(conn, slip_id=slip_id)
    if slip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"slip {slip_id} not found")
    await authorize_household(conn, user=user, household_id=slip.household_id)
    return slip


def _verify_url(request: Request, slip: Slip) -> str:
    return str(request.url_for("check_slip_code", code=slip.verify_code))


@router.post("", status_code=status.HTTP_201_CREATED)
async def open_slip(conn: ConnDep, user: Signer, today: TodayDep, body: SlipCreate) -> SlipPublic:
    """Open the household's slip; the charge is fixed from the price in force on the installation date."""
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=body.household_id)
        try:
            slip = await create_slip(
                conn, household_id=body.household_id, installed_on=body.installed_on, actor=user.actor, today=today
            )
        except (SlipError, FinanceError) as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn, actor=user, action="open_slip", object=f"slip:{slip.id}", detail={"household_id": body.household_id}
        )
    return SlipPublic.of(slip)


@router.post("/{slip_id}/signatures", status_code=status.HTTP_201_CREATED)
async def add_signature(conn: ConnDep, user: Signer, slip_id: SlipIdPath, body: SignatureCreate) -> SlipPublic:
    """Record one party's signature with the server's time; each role signs once."""
    async with conn.transaction():
        await _slip_for(conn, user, slip_id)
        try:
            slip = await sign_slip(
                conn, slip_id=slip_id, role=body.role, signer_name=body.signer_name, actor=user.actor
            )
        except SlipError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn, actor=user, action="sign_slip", object=f"slip:{slip_id}", detail={"role": body.role.value}
        )
    return SlipPublic.of(slip)


@router.get("/{slip_id}")
async def read_slip(conn: ConnDep, user: Reader, slip_id: SlipIdPath) -> SlipPublic:
    """One slip with its signatures."""
    return SlipPublic.of(await _slip_for(conn, user, slip_id))


@router.get("/{slip_id}/print.html", response_class=HTMLResponse)
async def print_html(conn: ConnDep, user: Reader, request: Request, slip_id: SlipIdPath) -> HTMLResponse:
    """The printable slip (HTML, Chinese) with a QR code linking back to it."""
    slip = await _slip_for(conn, user, slip_id)
    return HTMLResponse(render_html(slip, verify_url=_verify_url(request, slip)))


@router.get("/{slip_id}/print.pdf", response_class=Response, responses={200: {"content": {"application/pdf": {}}}})
async def print_pdf(conn: ConnDep, user: Reader, request: Request, slip_id: SlipIdPath) -> Response:
    """The printable slip as an A4 PDF in Chinese."""
    slip = await _slip_for(conn, user, slip_id)
    return Response(
        render_pdf(slip, verify_url=_verify_url(request, slip)),
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="slip-{slip.verify_code}.pdf"'},
    )


@router.post("/{slip_id}/verify", responses={status.HTTP_409_CONFLICT: {"description": "Missing signatures."}})
async def verify(conn: ConnDep, user: Verifier, slip_id: SlipIdPath) -> SlipPublic:
    """The housing bureau verifies one slip; refused (409) unless all five parties have signed."""
    async with conn.transaction():
        try:
            verification_id = await verify_slip(conn, slip_id=slip_id, actor=user.actor)
        except IncompleteSlipError as err:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail={"message": str(err), "missing": [m.value for m in err.missing]}
            ) from err
        except SlipError as err:
            code = status.HTTP_404_NOT_FOUND if "not found" in str(err) else status.HTTP_409_CONFLICT
            raise HTTPException(code, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action="verify_slip",
            object=f"slip:{slip_id}",
            detail={"verification_id": verification_id},
        )
        slip = await get_slip(conn, slip_id=slip_id)
    assert slip is not None
    return SlipPublic.of(slip)


@router.get("/check/{code}", name="check_slip_code")
async def check_code(conn: ConnDep, code: Annotated[str, Path(pattern=r"^[A-Za-z2-9]{10}$")]) -> SlipCheckPublic:
    """Public: check a printed slip by its code (no login, no personal data)."""
    slip = await get_slip_by_code(conn, code=code)
    if slip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="未找到该确认单")
    return SlipCheckPublic(
        verify_code=slip.verify_code,
        community_name=slip.community_name,
        installed_on=slip.installed_on,
        gas_type=slip.gas_type,
        signatures=len(slip.signatures),
        complete=slip.complete,
        verified=slip.verified_at is not None,
    )
