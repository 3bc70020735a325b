"""Authentication: password login with a session cookie, bearer tokens, 401/403, audit of logins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI

from registry.app import create_app
from registry.auth import (
    SESSION_COOKIE,
    CurrentUser,
    Role,
    User,
    create_user,
    issue_token,
    require_roles,
    scope_for,
)
from registry.settings import RegistrySettings

COMMUNITY = "150626100007"


async def _places(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO town (code, name) VALUES ('150626100000', '嘎鲁图镇') ON CONFLICT DO NOTHING")
    await db.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, '150626100000', '文苑社区', true)"
        " ON CONFLICT DO NOTHING",
        COMMUNITY,
    )


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield client


def _app(database_url: str, **overrides: Any) -> FastAPI:
    return create_app(RegistrySettings(database_url=database_url, cookie_secure=False, **overrides))


async def test_login_sets_httponly_session_cookie_and_me(database_url: str, db: asyncpg.Connection) -> None:
    """A person logs in with username and password, gets an httponly cookie, and /auth/me knows them."""
    await _places(db)
    await create_user(
        db,
        username="wang",
        password="s3cret-密码",
        display_name="王社区",
        role=Role.COMMUNITY_STAFF,
        community_code=COMMUNITY,
    )
    async with _client(_app(database_url)) as client:
        assert (await client.get("/auth/me")).status_code == 401
        response = await client.post("/auth/login", json={"username": "wang", "password": "s3cret-密码"})
        assert response.status_code == 200, response.text
        assert response.json()["role"] == "community_staff"
        set_cookie = response.headers["set-cookie"]
        assert set_cookie.startswith(f"{SESSION_COOKIE}=")
        assert "httponly" in set_cookie.lower()
        assert "samesite=strict" in set_cookie.lower()
        me = await client.get("/auth/me")
        assert me.status_code == 200
        assert me.json()["community_code"] == COMMUNITY

        assert (await client.post("/auth/logout")).status_code == 204
        client.cookies.clear()
    # The session is revoked server-side: replaying the old cookie fails.
    token = await db.fetchval("SELECT count(*) FROM user_session WHERE revoked_at IS NOT NULL")
    assert token == 1
    hashes = await db.fetch("SELECT password_hash FROM app_user")
    assert hashes[0]["password_hash"].startswith("$argon2id$")


async def test_revoked_session_cookie_is_refused(database_url: str, db: asyncpg.Connection) -> None:
    """After logout the same cookie value no longer authenticates."""
    await create_user(db, username="li", password="pw-123456", display_name="李", role=Role.ADMIN)
    async with _client(_app(database_url)) as client:
        await client.post("/auth/login", json={"username": "li", "password": "pw-123456"})
        cookie = client.cookies[SESSION_COOKIE]
        await client.post("/auth/logout")
        client.cookies.set(SESSION_COOKIE, cookie)
        response = await client.get("/auth/me")
        assert response.status_code == 401
        assert response.json()["detail"] == "session expired; log in again"


async def test_wrong_password_and_unknown_user_are_401_and_audited(database_url: str, db: asyncpg.Connection) -> None:
    """Wrong credentials are a 401 without telling which part was wrong; failures are audited."""
    await create_user(db, username="li", password="right-pw", display_name="李", role=Role.ADMIN)
    async with _client(_app(database_url)) as client:
        wrong = await client.post("/auth/login", json={"username": "li", "password": "wrong-pw"})
        unknown = await client.post("/auth/login", json={"username": "nobody", "password": "x"})
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        assert SESSION_COOKIE not in client.cookies
        assert (await client.post("/auth/login", json={"username": "li"})).status_code == 422
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["login_failed", "login_failed"]


async def test_bearer_tokens_for_machines(database_url: str, db: asyncpg.Connection) -> None:
    """An admin issues a machine token; it authenticates, is stored only hashed, and bad tokens are 401."""
    admin = await create_user(db, username="admin", password=None, display_name="管理员", role=Role.ADMIN)
    machine = await create_user(
        db, username="em-system", password=None, display_name="应急系统", role=Role.EMERGENCY_MANAGEMENT
    )
    admin_token = await issue_token(db, user_id=admin.id, name="test")
    async with _client(_app(database_url)) as client:
        issued = await client.post(
            "/auth/tokens",
            json={"user_id": machine.id, "name": "应急平台对接"},
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        me = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "em-system"
        # The machine is not an admin.
        again = await client.post(
            "/auth/tokens", json={"user_id": machine.id, "name": "x"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert again.status_code == 403
        for header in (f"Bearer {token}x", "Bearer ", "Basic YWRtaW46cHc=", token):
            response = await client.get("/auth/me", headers={"Authorization": header})
            assert response.status_code == 401, header
            assert response.headers["www-authenticate"] == "Bearer"
        # A password-less machine account cannot log in with any password.
        assert (await client.post("/auth/login", json={"username": "em-system", "password": ""})).status_code == 422
        assert (await client.post("/auth/login", json={"username": "em-system", "password": "x"})).status_code == 401
    stored = await db.fetchval("SELECT count(*) FROM api_token WHERE token_hash = convert_to($1, 'UTF8')", token)
    assert stored == 0  # never the token itself
    assert await db.fetchval("SELECT action FROM audit_log WHERE action = 'token_issued'") == "token_issued"


async def test_expired_token_and_inactive_user_are_401(database_url: str, db: asyncpg.Connection) -> None:
    """An expired token, or a token of a deactivated user, no longer authenticates."""
    user = await create_user(db, username="bot", password=None, display_name="bot", role=Role.HOUSING_BUREAU)
    expired = await issue_token(db, user_id=user.id, name="old")
    await db.execute("UPDATE api_token SET expires_at = now() - interval '1 second'")
    live = await issue_token(db, user_id=user.id, name="new")
    async with _client(_app(database_url)) as client:
        assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {expired}"})).status_code == 401
        assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {live}"})).status_code == 200
        await db.execute("UPDATE app_user SET active = false")
        assert (await client.get("/auth/me", headers={"Authorization": f"Bearer {live}"})).status_code == 401


async def test_require_roles_dependency(database_url: str, db: asyncpg.Connection) -> None:
    """require_roles answers 401 without credentials, 403 for other roles and returns the user otherwise."""
    app = _app(database_url)

    @app.get("/probe")
    async def probe(user: User = Depends(require_roles(Role.HOUSING_BUREAU, Role.ADMIN))) -> dict[str, str]:  # noqa: B008
        return {"who": user.username}

    @app.get("/anyone")
    async def anyone(user: CurrentUser) -> dict[str, str]:
        return {"role": user.role.value}

    bureau = await create_user(db, username="zjj", password=None, display_name="住建局", role=Role.HOUSING_BUREAU)
    installer = await create_user(db, username="azg", password=None, display_name="安装工", role=Role.INSTALLER)
    async with _client(app) as client:
        assert (await client.get("/probe")).status_code == 401
        ok = await client.get(
            "/probe", headers={"Authorization": f"Bearer {await issue_token(db, user_id=bureau.id, name='t')}"}
        )
        assert ok.json() == {"who": "zjj"}
        installer_headers = {"Authorization": f"Bearer {await issue_token(db, user_id=installer.id, name='t')}"}
        assert (await client.get("/probe", headers=installer_headers)).status_code == 403
        assert (await client.get("/anyone", headers=installer_headers)).json() == {"role": "installer"}


def test_scope_for_each_role() -> None:
    """Pure scoping rules: who sees which households and who may read a full phone number."""

    def user(role: Role, **kw: str) -> User:
        return User(id=7, username="u", display_name="u", role=role, community_code=kw.get("c"), supplier=kw.get("s"))

    assert scope_for(user(Role.ADMIN)).all_households
    em = scope_for(user(Role.EMERGENCY_MANAGEMENT))
    assert em.all_households and not em.may_read_phone and not em.may_see_personal_data
    assert not scope_for(user(Role.HOUSING_BUREAU)).may_read_phone
    staff = scope_for(user(Role.COMMUNITY_STAFF, c=COMMUNITY))
    assert (staff.all_households, staff.community_code, staff.may_read_phone) == (False, COMMUNITY, True)
    operator = scope_for(user(Role.DUTY_OPERATOR, s="乌审中燃"))
    assert (operator.supplier, operator.community_code) == ("乌审中燃", None)
    assert scope_for(user(Role.INSTALLER)).installer_id == 7


async def test_audit_log_is_append_only_with_server_time(db: asyncpg.Connection) -> None:
    """audit_log takes the server's time whatever the writer says, and refuses UPDATE and DELETE."""
    from registry import audit

    entry = await audit.record(db, actor="test", action="x", object="household:1", detail={"a": 1})
    await db.execute("INSERT INTO audit_log (at, actor, action, object) VALUES ('2000-01-01', 't', 'y', 'z')")
    years = [r["y"] for r in await db.fetch("SELECT extract(year FROM at)::int AS y FROM audit_log")]
    assert 2000 not in years
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE audit_log SET actor = 'other' WHERE id = $1", entry)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM audit_log")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("TRUNCATE audit_log")


async def test_admin_creates_users_who_can_log_in(database_url: str, db: asyncpg.Connection) -> None:
    """POST /auth/users (admin) creates a person who can then log in; scope fields are checked."""
    await _places(db)
    admin = await create_user(db, username="root", password=None, display_name="管理员", role=Role.ADMIN)
    headers = {"Authorization": f"Bearer {await issue_token(db, user_id=admin.id, name='t')}"}
    async with _client(_app(database_url)) as client:
        body = {"username": "zhao", "display_name": "赵社区", "role": "community_staff", "password": "long-enough-1"}
        assert (await client.post("/auth/users", json=body, headers=headers)).status_code == 422  # no community
        created = await client.post("/auth/users", json=body | {"community_code": COMMUNITY}, headers=headers)
        assert created.status_code == 201, created.text
        assert (
            await client.post("/auth/users", json=body | {"community_code": COMMUNITY}, headers=headers)
        ).status_code == 409
        bad_community = body | {"username": "qian", "community_code": "150626999999"}
        assert (await client.post("/auth/users", json=bad_community, headers=headers)).status_code == 422
        operator = {"username": "sun", "display_name": "孙", "role": "duty_operator", "password": "long-enough-2"}
        assert (await client.post("/auth/users", json=operator, headers=headers)).status_code == 422  # no supplier
        short = body | {"username": "zhou", "community_code": COMMUNITY, "password": "short"}
        assert (await client.post("/auth/users", json=short, headers=headers)).status_code == 422
        listed = (await client.get("/auth/users", headers=headers)).json()["items"]
        assert [u["username"] for u in listed] == ["root", "zhao"]
        login = await client.post("/auth/login", json={"username": "zhao", "password": "long-enough-1"})
        assert login.status_code == 200
        assert (await client.get("/auth/users")).status_code == 403  # the session is community staff's


async def test_seed_demo_users_is_idempotent(db: asyncpg.Connection) -> None:
    """One demo user per role, created once; the community user belongs to a real community."""
    from registry.auth import seed_demo_users

    await _places(db)
    first = await seed_demo_users(db, password="demo-password")
    second = await seed_demo_users(db, password="other-password")
    assert {u.role for u in first} == set(Role)
    assert [u.id for u in first] == [u.id for u in second]
    staff = next(u for u in first if u.role is Role.COMMUNITY_STAFF)
    assert staff.community_code == COMMUNITY
    assert await db.fetchval("SELECT count(*) FROM app_user") == len(Role)


async def test_audit_log_endpoint_for_admin_and_bureau(database_url: str, db: asyncpg.Connection) -> None:
    """Admin and housing bureau read the audit log newest first, filtered and paged, phone numbers masked."""
    from registry import audit

    bureau = await create_user(db, username="zjj", password=None, display_name="住建局", role=Role.HOUSING_BUREAU)
    staff = await create_user(db, username="sq", password=None, display_name="社区", role=Role.INSTALLER)
    for n in range(3):
        await audit.record(
            db, actor="user:x", action="read_phone", object=f"household:{n}", detail={"to": "13812345678"}
        )
    headers = {"Authorization": f"Bearer {await issue_token(db, user_id=bureau.id, name='t')}"}
    async with _client(_app(database_url)) as client:
        assert (await client.get("/audit")).status_code == 401
        other = {"Authorization": f"Bearer {await issue_token(db, user_id=staff.id, name='t')}"}
        assert (await client.get("/audit", headers=other)).status_code == 403
        first = (await client.get("/audit?limit=2", headers=headers)).json()
        assert [e["object"] for e in first["items"]] == ["household:2", "household:1"]
        assert first["items"][0]["detail"] == {"to": "138****5678"}
        rest = (await client.get(f"/audit?limit=2&cursor={first['next_cursor']}", headers=headers)).json()
        assert [e["object"] for e in rest["items"]] == ["household:0"] and rest["next_cursor"] is None
        one = (await client.get("/audit?object=household:1", headers=headers)).json()
        assert [e["object"] for e in one["items"]] == ["household:1"]
