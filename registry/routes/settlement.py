"""Settlement routes: the housing bureau's monthly verification and the quarterly statement (JSON, XLSX)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import BaseModel, ConfigDict

from registry import audit
from registry.auth import Role, User, require_roles
from registry.deps import ConnDep, StatisticalCode
from registry.settlement import quarterly_statement, statement_xlsx
from registry.slips import verify_month

router = APIRouter(prefix="/settlement", tags=["settlement 结算"])

Bureau = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU))]
YearPath = Annotated[int, Path(ge=2024, le=2100)]
QuarterPath = Annotated[int, Path(ge=1, le=4)]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


class VerificationCreate(BaseModel):
    """Verify a month's complete slips (optionally of one community)."""

    model_config = ConfigDict(extra="forbid")
    month: date
    community_code: StatisticalCode | None = None


class RefusedPublic(BaseModel):
    """A slip refused for verification and the signatures it lacks."""

    model_config = ConfigDict(frozen=True)
    slip_id: int
    missing: list[str]


class VerificationPublic(BaseModel):
    """Outcome of a monthly verification."""

    model_config = ConfigDict(frozen=True)
    verification_id: int
    verified: list[int]
    refused: list[RefusedPublic]


class StatementLinePublic(BaseModel):
    """Totals of one supplier, gas type and community, in fen."""

    model_config = ConfigDict(frozen=True)
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


class SupplierTotalPublic(BaseModel):
    """Payable to one supplier on one budget line, in fen."""

    model_config = ConfigDict(frozen=True)
    supplier: str
    gas_type: str
    payable_fen: int


class StatementPublic(BaseModel):
    """A quarterly statement of the government share."""

    model_config = ConfigDict(frozen=True)
    year: int
    quarter: int
    payable_fen: int
    suppliers: list[SupplierTotalPublic]
    lines: list[StatementLinePublic]


@router.post("/verifications", status_code=status.HTTP_201_CREATED)
async def verify(conn: ConnDep, user: Bureau, body: VerificationCreate) -> VerificationPublic:
    """Verify the month's complete slips; slips lacking a signature are refused and listed."""
    async with conn.transaction():
        run = await verify_month(conn, month=body.month, actor=user.actor, community_code=body.community_code)
        await audit.record(
            conn,
            actor=user,
            action="verify_month",
            object=f"slip_verification:{run.verification_id}",
            detail={"verified": len(run.verified), "refused": len(run.refused)},
        )
    return VerificationPublic(
        verification_id=run.verification_id,
        verified=list(run.verified),
        refused=[RefusedPublic(slip_id=e.slip_id, missing=[m.value for m in e.missing]) for e in run.refused],
    )


@router.get("/{year}/q{quarter}")
async def statement(conn: ConnDep, user: Bureau, year: YearPath, quarter: QuarterPath) -> StatementPublic:
    """The quarter's government share payable per supplier, town and community (fen)."""
    result = await quarterly_statement(conn, year=year, quarter=quarter)
    return StatementPublic(
        year=year,
        quarter=quarter,
        payable_fen=result.payable_fen,
        suppliers=[
            SupplierTotalPublic(supplier=s, gas_type=g, payable_fen=fen)
            for (s, g), fen in result.totals_by_supplier().items()
        ],
        lines=[StatementLinePublic(**vars(line)) for line in result.lines],
    )


@router.get("/{year}/q{quarter}/statement.xlsx", response_class=Response, responses={200: {"content": {XLSX: {}}}})
async def statement_export(conn: ConnDep, user: Bureau, year: YearPath, quarter: QuarterPath) -> Response:
    """The quarterly statement as XLSX (per supplier, per town and community, spot-check results)."""
    result = await quarterly_statement(conn, year=year, quarter=quarter)
    return Response(
        await statement_xlsx(conn, result),
        media_type=XLSX,
        headers={"Content-Disposition": f'attachment; filename="settlement-{year}-q{quarter}.xlsx"'},
    )
