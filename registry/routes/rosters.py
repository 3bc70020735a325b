"""Roster routes: import a community's monthly batch (all or nothing), the XLSX error report, XLSX export."""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Response, UploadFile, status
from pydantic import BaseModel, ConfigDict

from registry import audit
from registry.auth import Role, User, require_roles
from registry.deps import ConnDep, StatisticalCode, TodayDep
from registry.rosters import (
    ImportResult,
    RosterFileError,
    error_report_xlsx,
    export_roster,
    import_roster_checked,
    parse_roster,
)

_LOGGER = logging.getLogger(__name__)

router = APIRouter(prefix="/rosters", tags=["rosters 花名册"])

RosterEditor = Annotated[User, Depends(require_roles(Role.ADMIN, Role.COMMUNITY_STAFF))]
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
#: Largest roster file accepted (a county-wide 40,000-row XLSX is about 2 MB).
MAX_BYTES = 32 * 1024 * 1024


class RowErrorPublic(BaseModel):
    """One problem of one row (row 1 is the header)."""

    model_config = ConfigDict(frozen=True)
    row: int
    column: str
    message: str


class ImportPublic(BaseModel):
    """Outcome of a roster import."""

    model_config = ConfigDict(frozen=True)
    committed: bool
    batch_id: int | None
    already_imported: bool
    row_count: int
    inserted: int
    updated: int
    unchanged: int
    late: bool
    errors: list[RowErrorPublic]

    @classmethod
    def of(cls, result: ImportResult) -> ImportPublic:
        """From the domain result."""
        return cls(
            committed=result.committed,
            batch_id=result.batch_id,
            already_imported=result.already_imported,
            row_count=result.row_count,
            inserted=result.inserted,
            updated=result.updated,
            unchanged=result.unchanged,
            late=result.late,
            errors=[RowErrorPublic(row=e.row, column=e.column, message=e.message) for e in result.errors],
        )


def _community_for(user: User, community_code: str | None) -> str | None:
    """Community staff import and export only their own community."""
    if user.role is Role.COMMUNITY_STAFF:
        if community_code is not None and community_code != user.community_code:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"community {community_code} is outside your scope")
        return user.community_code
    return community_code


async def _read(file: UploadFile) -> tuple[bytes, str]:
    data = await file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"roster larger than {MAX_BYTES} bytes")
    return data, file.filename or "roster"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_200_OK: {"description": "The same file was imported before; nothing changed."},
        status.HTTP_422_UNPROCESSABLE_CONTENT: {"description": "Rejected: nothing committed; row-by-row errors."},
    },
)
async def import_batch(
    conn: ConnDep,
    user: RosterEditor,
    today: TodayDep,
    response: Response,
    file: Annotated[UploadFile, File(description="CSV (UTF-8 or GBK) or XLSX with the roster headers.")],
    period: Annotated[date, Form(description="Month of the batch (any day of it).")],
    community_code: Annotated[StatisticalCode | None, Form()] = None,
) -> ImportPublic:
    """Import a monthly roster batch: every row is committed, or none is and each bad row is reported."""
    community = _community_for(user, community_code)
    data, filename = await _read(file)
    try:
        parsed = parse_roster(data, filename)
    except RosterFileError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(err)) from err
    async with conn.transaction():
        result = await import_roster_checked(
            conn,
            parsed=parsed,
            filename=filename,
            period=period,
            actor=user.actor,
            community_code=community,
            today=today,
        )
        if result.committed and not result.already_imported:
            await audit.record(
                conn,
                actor=user,
                action="import_roster",
                object=f"roster_batch:{result.batch_id}",
                detail={"rows": result.row_count, "inserted": result.inserted, "updated": result.updated},
            )
    if not result.committed:
        response.status_code = status.HTTP_422_UNPROCESSABLE_CONTENT
    elif result.already_imported:
        response.status_code = status.HTTP_200_OK
    return ImportPublic.of(result)


@router.post("/error-report", response_class=Response, responses={200: {"content": {XLSX: {}}}})
async def error_report(
    conn: ConnDep,
    user: RosterEditor,
    today: TodayDep,
    file: Annotated[UploadFile, File()],
    period: Annotated[date, Form()],
    community_code: Annotated[StatisticalCode | None, Form()] = None,
) -> Response:
    """Validate a roster without committing it and return it as XLSX with the bad cells marked red."""
    community = _community_for(user, community_code)
    data, filename = await _read(file)
    try:
        parsed = parse_roster(data, filename)
    except RosterFileError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(err)) from err
    result = await import_roster_checked(
        conn,
        parsed=parsed,
        filename=filename,
        period=period,
        actor=user.actor,
        community_code=community,
        today=today,
        validate_only=True,
    )
    return Response(
        error_report_xlsx(parsed, result.errors),
        media_type=XLSX,
        headers={"Content-Disposition": 'attachment; filename="roster-errors.xlsx"'},
    )


@router.get("/export", response_class=Response, responses={200: {"content": {XLSX: {}}}})
async def export(
    conn: ConnDep,
    user: RosterEditor,
    community_code: Annotated[StatisticalCode | None, Query()] = None,
) -> Response:
    """Households as a roster XLSX in the import's shape; contains phone numbers, so the read is audited."""
    community = _community_for(user, community_code)
    async with conn.transaction():
        data, count = await export_roster(conn, community_code=community)
        await audit.record(
            conn, actor=user, action="export_roster", object=f"community:{community or 'all'}", detail={"rows": count}
        )
    return Response(data, media_type=XLSX, headers={"Content-Disposition": 'attachment; filename="roster.xlsx"'})
