"""Finance routes: prices and split ratios, eligibility and contracts, and the household ledger (fen)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

from registry import audit
from registry.auth import Role, User, authorize_household, require_roles
from registry.contracts import ContractError, Eligibility, household_eligibility, record_contract
from registry.deps import BIGINT_MAX, ConnDep, TodayDep
from registry.finance import FinanceError, LedgerKind, Price, add_price, household_ledger, list_prices, record_movement

router = APIRouter(prefix="/finance", tags=["finance 资金"])

HouseholdIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Household id.")]
Admin = Annotated[User, Depends(require_roles(Role.ADMIN))]
Reader = Annotated[
    User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU, Role.COMMUNITY_STAFF, Role.DUTY_OPERATOR))
]
ContractEditor = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU, Role.COMMUNITY_STAFF))]
Cashier = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU, Role.COMMUNITY_STAFF))]

#: Who may record which movement: the community handles the resident share, the bureau pays the government share.
_MOVEMENT_ROLES: dict[LedgerKind, frozenset[Role]] = {
    LedgerKind.RESIDENT_COLLECTED: frozenset({Role.ADMIN, Role.COMMUNITY_STAFF}),
    LedgerKind.RESIDENT_PAID: frozenset({Role.ADMIN, Role.COMMUNITY_STAFF}),
    LedgerKind.GOVERNMENT_PAID: frozenset({Role.ADMIN, Role.HOUSING_BUREAU}),
}


class PricePublic(BaseModel):
    """A price row: total in fen and the split in basis points (10000 = 100%)."""

    model_config = ConfigDict(frozen=True)
    id: int
    gas_type: Literal["NG", "LPG"]
    item: str
    effective_from: date
    price_fen: int
    company_bp: int
    government_bp: int
    resident_bp: int

    @classmethod
    def of(cls, price: Price) -> PricePublic:
        """From the domain price."""
        return cls(**{f: getattr(price, f) for f in cls.model_fields})


class PriceCreate(BaseModel):
    """A new price taking effect on a date."""

    model_config = ConfigDict(extra="forbid")
    gas_type: Literal["NG", "LPG"]
    item: str = Field(min_length=1, max_length=200)
    effective_from: date
    price_fen: int = Field(gt=0, le=10_000_000)
    company_bp: int = Field(ge=0, le=10000)
    government_bp: int = Field(ge=0, le=10000)
    resident_bp: int = Field(ge=0, le=10000)


class EligibilityPublic(BaseModel):
    """What the programme says about a household, and its contract."""

    model_config = ConfigDict(frozen=True)
    household_id: int
    gas_type: str
    gas_connected_on: date | None
    kit_expires_on: date | None
    eligibility: Eligibility
    contract_signed_on: date | None
    resident_prepaid: bool


class ContractCreate(BaseModel):
    """The household's contract was signed (签订)."""

    model_config = ConfigDict(extra="forbid")
    signed_on: date
    resident_prepaid: bool = False


class MovementCreate(BaseModel):
    """A money movement in fen."""

    model_config = ConfigDict(extra="forbid")
    kind: LedgerKind
    amount_fen: int = Field(gt=0, le=10_000_000)
    note: str | None = Field(default=None, max_length=500)


class LedgerPublic(BaseModel):
    """A household's account in fen."""

    model_config = ConfigDict(frozen=True)
    household_id: int
    gas_type: str
    total_fen: int | None
    company_fen: int | None
    government_fen: int | None
    resident_fen: int | None
    resident_collected_fen: int
    resident_paid_fen: int
    government_paid_fen: int
    resident_outstanding_fen: int


@router.get("/prices")
async def read_prices(conn: ConnDep, user: Reader) -> list[PricePublic]:
    """Every configured price with its effective date."""
    return [PricePublic.of(p) for p in await list_prices(conn)]


@router.post("/prices", status_code=status.HTTP_201_CREATED)
async def create_price(conn: ConnDep, user: Admin, body: PriceCreate) -> PricePublic:
    """Add a price taking effect on a date (slips already opened keep their charge)."""
    async with conn.transaction():
        try:
            price = await add_price(conn, **body.model_dump())
        except FinanceError as err:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(err)) from err
        await audit.record(
            conn, actor=user, action="add_price", object=f"price:{price.id}", detail=body.model_dump(mode="json")
        )
    return PricePublic.of(price)


@router.get("/households/{household_id}/eligibility")
async def read_eligibility(
    conn: ConnDep, user: Reader, today: TodayDep, household_id: HouseholdIdPath
) -> EligibilityPublic:
    """Must install, optional, or resident pays all; and whether the contract is signed."""
    await authorize_household(conn, user=user, household_id=household_id)
    result = await household_eligibility(conn, household_id=household_id, today=today)
    assert result is not None  # authorize_household found it
    return EligibilityPublic(**{f: getattr(result, f) for f in EligibilityPublic.model_fields})


@router.put("/households/{household_id}/contract", status_code=status.HTTP_201_CREATED)
async def sign_contract(
    conn: ConnDep, user: ContractEditor, today: TodayDep, household_id: HouseholdIdPath, body: ContractCreate
) -> EligibilityPublic:
    """Record the household's signed contract (once)."""
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=household_id)
        try:
            await record_contract(
                conn,
                household_id=household_id,
                signed_on=body.signed_on,
                resident_prepaid=body.resident_prepaid,
                actor=user.actor,
            )
        except ContractError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action="sign_contract",
            object=f"household:{household_id}",
            detail=body.model_dump(mode="json"),
        )
        result = await household_eligibility(conn, household_id=household_id, today=today)
    assert result is not None
    return EligibilityPublic(**{f: getattr(result, f) for f in EligibilityPublic.model_fields})


async def _ledger(conn: ConnDep, household_id: int) -> LedgerPublic:
    ledger = await household_ledger(conn, household_id=household_id)
    split = ledger.split
    return LedgerPublic(
        household_id=household_id,
        gas_type=ledger.gas_type,
        total_fen=None if split is None else split.total_fen,
        company_fen=None if split is None else split.company_fen,
        government_fen=None if split is None else split.government_fen,
        resident_fen=None if split is None else split.resident_fen,
        resident_collected_fen=ledger.resident_collected_fen,
        resident_paid_fen=ledger.resident_paid_fen,
        government_paid_fen=ledger.government_paid_fen,
        resident_outstanding_fen=ledger.resident_outstanding_fen,
    )


@router.get("/households/{household_id}/ledger")
async def read_ledger(conn: ConnDep, user: Reader, household_id: HouseholdIdPath) -> LedgerPublic:
    """Due, collected by the community, and paid, in fen."""
    await authorize_household(conn, user=user, household_id=household_id)
    return await _ledger(conn, household_id)


@router.post("/households/{household_id}/ledger", status_code=status.HTTP_201_CREATED)
async def add_movement(
    conn: ConnDep, user: Cashier, household_id: HouseholdIdPath, body: MovementCreate
) -> LedgerPublic:
    """Record money collected or paid; more than is due is refused (409)."""
    if user.role not in _MOVEMENT_ROLES[body.kind]:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role {user.role.value!r} may not record {body.kind.value}"
        )
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=household_id)
        try:
            entry = await record_movement(
                conn,
                household_id=household_id,
                kind=body.kind,
                amount_fen=body.amount_fen,
                actor=user.actor,
                note=body.note,
            )
        except FinanceError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action=f"ledger_{body.kind.value}",
            object=f"household:{household_id}",
            detail={"entry": entry.id, "amount_fen": body.amount_fen},
        )
    return await _ledger(conn, household_id)
