"""Login, logout, the caller's identity, and bearer tokens for machines."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from registry import audit
from registry.auth import (
    SESSION_COOKIE,
    CurrentUser,
    Role,
    User,
    authenticate,
    create_user,
    end_session,
    get_user,
    issue_token,
    require_roles,
    start_session,
)
from registry.deps import DEFAULT_LIMIT, BigIntId, ConnDep, CursorCodec, CursorQuery, LimitQuery, SettingsDep
from registry.models import ScrubbedJson, ScrubbedText

router = APIRouter(prefix="/auth", tags=["auth"])


class LoginRequest(BaseModel):
    """Username and password of a person."""

    model_config = ConfigDict(frozen=True)

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class UserPublic(BaseModel):
    """Who is calling."""

    model_config = ConfigDict(frozen=True)

    id: int
    username: str
    display_name: str
    role: Role
    community_code: str | None
    supplier: str | None

    @classmethod
    def of(cls, user: User) -> UserPublic:
        """Build from a `registry.auth.User`."""
        return cls(
            id=user.id,
            username=user.username,
            display_name=user.display_name,
            role=user.role,
            community_code=user.community_code,
            supplier=user.supplier,
        )


class TokenRequest(BaseModel):
    """A bearer token to issue for a (machine) user."""

    model_config = ConfigDict(frozen=True)

    user_id: BigIntId
    name: str = Field(min_length=1, max_length=100)
    expires_at: AwareDatetime | None = None


class TokenPublic(BaseModel):
    """A freshly issued bearer token; it is shown only this once."""

    model_config = ConfigDict(frozen=True)

    token: str
    user_id: int
    name: str
    expires_at: datetime | None


@router.post("/login", responses={status.HTTP_401_UNAUTHORIZED: {"description": "Wrong credentials."}})
async def login(body: LoginRequest, conn: ConnDep, settings: SettingsDep, response: Response) -> UserPublic:
    """Log a person in; sets an httponly session cookie."""
    user = await authenticate(conn, username=body.username, password=body.password)
    if user is None:
        async with conn.transaction():
            await audit.record(conn, actor=f"anonymous:{body.username}", action="login_failed", object="auth")
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="用户名或密码错误 (wrong username or password)")
    async with conn.transaction():
        token = await start_session(conn, user=user, ttl=timedelta(seconds=settings.session_ttl_s))
        await audit.record(conn, actor=user, action="login", object=f"user:{user.id}")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.session_ttl_s,
        httponly=True,
        secure=settings.cookie_secure,
        samesite="strict",
        path="/",
    )
    return UserPublic.of(user)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(user: CurrentUser, request: Request, conn: ConnDep, response: Response) -> None:
    """End the caller's session (if it used one) and drop the cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    async with conn.transaction():
        if cookie:
            await end_session(conn, token=cookie)
        await audit.record(conn, actor=user, action="logout", object=f"user:{user.id}")
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/me")
async def me(user: CurrentUser) -> UserPublic:
    """The authenticated caller."""
    return UserPublic.of(user)


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(
    body: TokenRequest, conn: ConnDep, admin: Annotated[User, Depends(require_roles(Role.ADMIN))]
) -> TokenPublic:
    """Issue a bearer token for a machine account (admin only); the token is returned only here."""
    async with conn.transaction():
        if await get_user(conn, user_id=body.user_id) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"user {body.user_id} not found")
        token = await issue_token(conn, user_id=body.user_id, name=body.name, expires_at=body.expires_at)
        await audit.record(
            conn, actor=admin, action="token_issued", object=f"user:{body.user_id}", detail={"name": body.name}
        )
    return TokenPublic(token=token, user_id=body.user_id, name=body.name, expires_at=body.expires_at)


class UserCreate(BaseModel):
    """A new user; community staff need a community code, duty operators a supplier."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(pattern=r"^[A-Za-z0-9_.@\-]{2,64}$")
    display_name: str = Field(min_length=1, max_length=50)
    role: Role
    password: str | None = Field(default=None, min_length=10, max_length=256)
    community_code: str | None = Field(default=None, pattern=r"^[0-9]{12}$")
    supplier: str | None = Field(default=None, min_length=1, max_length=100)


class UsersPublic(BaseModel):
    """Every user."""

    model_config = ConfigDict(frozen=True)

    items: list[UserPublic]


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"description": "Username taken."}},
)
async def create_user_route(
    body: UserCreate, conn: ConnDep, admin: Annotated[User, Depends(require_roles(Role.ADMIN))]
) -> UserPublic:
    """Create a person (with a password) or a machine account (without one); admin only."""
    if body.role is Role.COMMUNITY_STAFF and body.community_code is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="community staff need a community_code")
    if body.role is Role.DUTY_OPERATOR and body.supplier is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="duty operators need a supplier")
    async with conn.transaction():
        if body.community_code is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM community WHERE code = $1)", body.community_code
        ):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"unknown community code {body.community_code}"
            )
        try:
            user = await create_user(
                conn,
                username=body.username,
                password=body.password,
                display_name=body.display_name,
                role=body.role,
                community_code=body.community_code,
                supplier=body.supplier,
            )
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"username {body.username!r} is taken") from err
        await audit.record(
            conn, actor=admin, action="user_created", object=f"user:{user.id}", detail={"role": user.role.value}
        )
    return UserPublic.of(user)


@router.get("/users")
async def list_users(conn: ConnDep, admin: Annotated[User, Depends(require_roles(Role.ADMIN))]) -> UsersPublic:
    """Every active user (admin only)."""
    rows = await conn.fetch(
        "SELECT id, username, display_name, role, community_code, supplier FROM app_user WHERE active ORDER BY id"
    )
    return UsersPublic(items=[UserPublic.model_validate(dict(row)) for row in rows])


audit_router = APIRouter(tags=["audit"])


class AuditEntryPublic(BaseModel):
    """One audit log entry; phone numbers in it are masked."""

    model_config = ConfigDict(frozen=True)

    id: int
    at: datetime
    actor: ScrubbedText
    action: str
    object: str
    detail: ScrubbedJson


class AuditPublic(BaseModel):
    """A page of the audit log, newest first."""

    model_config = ConfigDict(frozen=True)

    items: list[AuditEntryPublic]
    limit: int
    next_cursor: str | None


_AUDIT_CURSOR = CursorCodec(TypeAdapter(tuple[BigIntId]))


@audit_router.get("/audit")
async def read_audit_log(
    conn: ConnDep,
    user: Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU))],
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    object: Annotated[str | None, Query(max_length=100, description="e.g. household:12")] = None,
    actor: Annotated[str | None, Query(max_length=100, description="e.g. user:zhang")] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
) -> AuditPublic:
    """The append-only audit log, newest first (admin and housing bureau)."""
    after = _AUDIT_CURSOR.decode(cursor)
    rows = await conn.fetch(
        "SELECT id, at, actor, action, object, detail FROM audit_log"
        " WHERE ($1::text IS NULL OR object = $1) AND ($2::text IS NULL OR actor = $2)"
        " AND ($3::text IS NULL OR action = $3) AND ($4::bigint IS NULL OR id < $4)"
        " ORDER BY id DESC LIMIT $5",
        object,
        actor,
        action,
        None if after is None else after[0],
        limit + 1,
    )
    page, next_cursor = _AUDIT_CURSOR.page(rows, limit=limit, key=lambda row: (row["id"],))
    return AuditPublic(
        items=[AuditEntryPublic.model_validate(dict(row)) for row in page], limit=limit, next_cursor=next_cursor
    )
