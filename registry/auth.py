"""Authentication and roles of the registry API: sessions for people, bearer tokens for machines.

People log in with username and password (argon2 via pwdlib) and get an httponly session cookie;
machines send ``Authorization: Bearer <token>``. Only SHA-256 hashes of session and bearer tokens are
stored, so a copy of the database lets nobody in. Routes declare who may call them with
``Depends(require_roles(...))`` or take the caller as `CurrentUser`; what a role may *see* is
`scope_for`, a pure function of the user.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from registry import queries
from registry.deps import ConnDep
from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)

#: Name of the session cookie set by ``POST /auth/login``.
SESSION_COOKIE = "gg_session"

_HASHER = PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so both cases take the same time."""
    return _HASHER.hash(secrets.token_urlsafe(16))


class Role(StrEnum):
    """What a user is allowed to do and see."""

    EMERGENCY_MANAGEMENT = "emergency_management"
    DUTY_OPERATOR = "duty_operator"
    INSTALLER = "installer"
    COMMUNITY_STAFF = "community_staff"
    HOUSING_BUREAU = "housing_bureau"
    ADMIN = "admin"


@dataclass(frozen=True)
class User:
    """An authenticated user of the registry API."""

    id: int
    username: str
    display_name: str
    role: Role
    community_code: str | None
    supplier: str | None

    @property
    def actor(self) -> str:
        """How this user appears in audit and incident timelines (``user:<username>``)."""
        return f"user:{self.username}"


@dataclass(frozen=True)
class Scope:
    """Which households a user may see: all of them, or those of one community, supplier or installer."""

    all_households: bool = False
    community_code: str | None = None
    supplier: str | None = None
    installer_id: int | None = None
    #: May this user read a resident's full phone number (always audited)?
    may_read_phone: bool = False
    #: May this user see personal data at all (masked)? Emergency management sees none.
    may_see_personal_data: bool = True


def scope_for(user: User) -> Scope:
    """The households ``user`` may see and what personal data it may read."""
    match user.role:
        case Role.ADMIN:
            return Scope(all_households=True, may_read_phone=True)
        case Role.HOUSING_BUREAU:
            return Scope(all_households=True)
        case Role.EMERGENCY_MANAGEMENT:
            return Scope(all_households=True, may_see_personal_data=False)
        case Role.DUTY_OPERATOR:
            return Scope(supplier=user.supplier, may_read_phone=True)
        case Role.COMMUNITY_STAFF:
            return Scope(community_code=user.community_code, may_read_phone=True)
        case Role.INSTALLER:
            return Scope(installer_id=user.id, may_read_phone=True)


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Whether ``password`` matches ``password_hash`` (False, in constant-ish time, if there is none)."""
    if password_hash is None:
        _HASHER.verify(password, _dummy_hash())
        return False
    try:
        return _HASHER.verify(password, password_hash)
    except ValueError:  # not a hash we understand
        return False


def token_digest(token: str) -> bytes:
    """The stored form of a session or bearer token."""
    return hashlib.sha256(token.encode("utf-8")).digest()


_USER_COLUMNS = "u.id, u.username, u.display_name, u.role, u.community_code, u.supplier"


def _user(row: Any) -> User:
    return User(
        id=row["id"],
        username=row["username"],
        display_name=row["display_name"],
        role=Role(row["role"]),
        community_code=row["community_code"],
        supplier=row["supplier"],
    )


async def create_user(
    conn: Conn,
    *,
    username: str,
    password: str | None,
    display_name: str,
    role: Role,
    community_code: str | None = None,
    supplier: str | None = None,
) -> User:
    """Create a user (``password=None``: a machine account that only uses bearer tokens)."""
    password_hash = None if password is None else await asyncio.to_thread(hash_password, password)
    row = await conn.fetchrow(
        """
        INSERT INTO app_user (username, display_name, role, community_code, supplier, password_hash)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING id, username, display_name, role, community_code, supplier
        """,
        username,
        display_name,
        role.value,
        community_code,
        supplier,
        password_hash,
    )
    return _user(row)


async def get_user(conn: Conn, *, user_id: int) -> User | None:
    """An active user by id, or None."""
    row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM app_user u WHERE u.id = $1 AND u.active", user_id)
    return None if row is None else _user(row)


async def authenticate(conn: Conn, *, username: str, password: str) -> User | None:
    """The active user with these credentials, or None."""
    row = await conn.fetchrow(
        f"SELECT {_USER_COLUMNS}, u.password_hash FROM app_user u WHERE u.username = $1 AND u.active", username
    )
    stored = None if row is None else row["password_hash"]
    ok = await asyncio.to_thread(verify_password, password, stored)
    return _user(row) if ok and row is not None else None


async def start_session(conn: Conn, *, user: User, ttl: timedelta) -> str:
    """Open a login session for ``user``; returns the cookie value (stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO user_session (token_hash, user_id, expires_at) VALUES ($1, $2, now() + $3::interval)",
        token_digest(token),
        user.id,
        ttl,
    )
    return token


async def end_session(conn: Conn, *, token: str) -> None:
    """Revoke a session (logout); unknown tokens are ignored."""
    await conn.execute(
        "UPDATE user_session SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
        token_digest(token),
    )


async def issue_token(conn: Conn, *, user_id: int, name: str, expires_at: datetime | None = None) -> str:
    """Issue a bearer token for a (machine) user; returns it once, stores only its hash."""
    token = "gg_" + secrets.token_urlsafe(32)
    await conn.execute(
        "INSERT INTO api_token (token_hash, user_id, name, expires_at) VALUES ($1, $2, $3, $4)",
        token_digest(token),
        user_id,
        name,
        expires_at,
    )
    return token


async def user_for_session(conn: Conn, *, token: str) -> User | None:
    """The user of a live session, or None."""
    row = await conn.fetchrow(
        f"""
        SELECT {_USER_COLUMNS}
        FROM user_session s JOIN app_user u ON u.id = s.user_id
        WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND u.active
        """,
        token_digest(token),
    )
    return None if row is None else _user(row)


async def user_for_token(conn: Conn, *, token: str) -> User | None:
    """The user of a live bearer token, or None."""
    row = await conn.fetchrow(
        f"""
        SELECT {_USER_COLUMNS}
        FROM api_token t JOIN app_user u ON u.id = t.user_id
        WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
          AND u.active
        """,
        token_digest(token),
    )
    return None if row is None else _user(row)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def current_user(request: Request, conn: ConnDep) -> User:
    """The caller, from a bearer token or the session cookie; 401 without valid credentials."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("unsupported authorization; use 'Bearer <token>'")
        user = await user_for_token(conn, token=token.strip())
        if user is None:
            raise _unauthorized("invalid or expired token")
        return user
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        user = await user_for_session(conn, token=cookie)
        if user is None:
            raise _unauthorized("session expired; log in again")
        return user
    raise _unauthorized("not authenticated")


CurrentUser = Annotated[User, Depends(current_user)]


def require_roles(*roles: Role) -> Callable[[User], Coroutine[Any, Any, User]]:
    """A dependency that returns the caller if it has one of ``roles``, else answers 403."""
    allowed = frozenset(roles)

    async def dependency(user: CurrentUser) -> User:
        if user.role not in allowed:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"role {user.role.value!r} may not do this")
        return user

    return dependency


async def authorize_household(conn: Conn, *, user: User, household_id: int) -> None:
    """404 if the household does not exist, 403 if ``user`` may not see it."""
    exists = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM household WHERE id = $1)", household_id)
    if not exists:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"household {household_id} not found")
    if not await queries.household_in_scope(conn=conn, household_id=household_id, scope=scope_for(user)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"household {household_id} is outside your scope")


#: One demo user per role: (username, display name, role). Community staff get the first community.
DEMO_USERS: tuple[tuple[str, str, Role], ...] = (
    ("admin", "系统管理员", Role.ADMIN),
    ("yingji", "旗应急管理局", Role.EMERGENCY_MANAGEMENT),
    ("zhiban", "乌审中燃值班员", Role.DUTY_OPERATOR),
    ("anzhuang", "安装师傅", Role.INSTALLER),
    ("shequ", "社区工作人员", Role.COMMUNITY_STAFF),
    ("zhujian", "旗住建局", Role.HOUSING_BUREAU),
)


async def seed_demo_users(conn: Conn, *, password: str, ng_supplier: str = "乌审中燃") -> list[User]:
    """Create the demo users (all with ``password``) unless they exist; for the demo and browser tests."""
    community = await conn.fetchval("SELECT code FROM community ORDER BY code LIMIT 1")
    users: list[User] = []
    for username, display_name, role in DEMO_USERS:
        row = await conn.fetchrow(f"SELECT {_USER_COLUMNS} FROM app_user u WHERE u.username = $1", username)
        if row is not None:
            users.append(_user(row))
            continue
        if role is Role.COMMUNITY_STAFF and community is None:
            continue
        users.append(
            await create_user(
                conn,
                username=username,
                password=password,
                display_name=display_name,
                role=role,
                community_code=community if role is Role.COMMUNITY_STAFF else None,
                supplier=ng_supplier if role is Role.DUTY_OPERATOR else None,
            )
        )
    return users
