"""Settlement routes: the housing bureau's monthly verification and the quarterly statement (JSON, XLSX).

A quarter is settled by freezing its statement (``POST /settlement/{year}/q{quarter}/freeze``); from then on
the stored statement is what every read returns, with the lines a recomputation would now change listed in
``differences``.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Response, status
from pydantic import BaseModel, ConfigDict, Field

from registry import audit
from registry.auth import Role, User, require_roles
from registry.deps import ConnDep, StatisticalCode, TodayDep
from registry.settlement import (
    FrozenStatement,
    LineDifference,
    SettlementError,
    Statement,
    StatementLine,
    differences,
    freeze_statement,
    frozen_statement,
    quarterly_statement,
    statement_xlsx,
)
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


class DifferencePublic(BaseModel):
    """A line of a frozen statement that a recomputation now gives differently (null: line on one side only)."""

    model_config = ConfigDict(frozen=True)
    supplier: str
    gas_type: str
    community_code: str
    frozen: StatementLinePublic | None
    current: StatementLinePublic | None


class StatementPublic(BaseModel):
    """A quarterly statement of the government share."""

    model_config = ConfigDict(frozen=True)
    year: int
    quarter: int
    payable_fen: int
    suppliers: list[SupplierTotalPublic]
    lines: list[StatementLinePublic]
    frozen: bool = Field(description="Settled: these are the stored lines, which later edits do not change.")
    frozen_at: datetime | None = None
    frozen_by: str | None = None
    recomputed_payable_fen: int = Field(
        description="What the quarter's data gives now (equals payable_fen if unchanged)."
    )
    differences: list[DifferencePublic] = Field(
        description="Frozen quarters: lines a recomputation now gives differently; always empty before freezing."
    )


def _line(line: StatementLine | None) -> StatementLinePublic | None:
    return None if line is None else StatementLinePublic(**vars(line))


def _public(statement: Statement, *, frozen: FrozenStatement | None, current: Statement) -> StatementPublic:
    changed: list[LineDifference] = [] if frozen is None else differences(frozen.statement, current)
    return StatementPublic(
        year=statement.year,
        quarter=statement.quarter,
        payable_fen=statement.payable_fen,
        suppliers=[
            SupplierTotalPublic(supplier=s, gas_type=g, payable_fen=fen)
            for (s, g), fen in statement.totals_by_supplier().items()
        ],
        lines=[StatementLinePublic(**vars(line)) for line in statement.lines],
        frozen=frozen is not None,
        frozen_at=None if frozen is None else frozen.frozen_at,
        frozen_by=None if frozen is None else frozen.frozen_by,
        recomputed_payable_fen=current.payable_fen,
        differences=[
            DifferencePublic(
                supplier=d.supplier,
                gas_type=d.gas_type,
                community_code=d.community_code,
                frozen=_line(d.frozen),
                current=_line(d.current),
            )
            for d in changed
        ],
    )


async def _statement(conn: ConnDep, year: int, quarter: int) -> tuple[Statement, FrozenStatement | None, Statement]:
    """The quarter's statement (the stored one once frozen), the frozen record, and a recomputation."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        frozen = await frozen_statement(conn, year=year, quarter=quarter)
        current = await quarterly_statement(conn, year=year, quarter=quarter)
    return (current if frozen is None else frozen.statement), frozen, current


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
    """The quarter's government share payable per supplier, town and community (fen).

    Once the quarter is frozen this is the stored statement; ``differences`` lists what a recomputation
    from today's data would change.
    """
    result, frozen, current = await _statement(conn, year, quarter)
    return _public(result, frozen=frozen, current=current)


@router.post(
    "/{year}/q{quarter}/freeze",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"description": "Already frozen, or the quarter is not over."}},
)
async def freeze(conn: ConnDep, user: Bureau, today: TodayDep, year: YearPath, quarter: QuarterPath) -> StatementPublic:
    """Settle the quarter: store its statement as computed now; later edits no longer change it."""
    async with conn.transaction():
        try:
            frozen = await freeze_statement(conn, year=year, quarter=quarter, actor=user.actor, today=today)
        except SettlementError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action="settlement_frozen",
            object=f"settlement:{year}-q{quarter}",
            detail={"payable_fen": frozen.statement.payable_fen, "lines": len(frozen.statement.lines)},
        )
    return _public(frozen.statement, frozen=frozen, current=frozen.statement)


@router.get("/{year}/q{quarter}/statement.xlsx", response_class=Response, responses={200: {"content": {XLSX: {}}}})
async def statement_export(conn: ConnDep, user: Bureau, year: YearPath, quarter: QuarterPath) -> Response:
    """The quarterly statement as XLSX (per supplier, per town and community, spot-check results).

    A frozen quarter exports its stored statement, marked as settled.
    """
    result, frozen, _ = await _statement(conn, year, quarter)
    return Response(
        await statement_xlsx(conn, result, frozen_at=None if frozen is None else frozen.frozen_at),
        media_type=XLSX,
        headers={"Content-Disposition": f'attachment; filename="settlement-{year}-q{quarter}.xlsx"'},
    )
