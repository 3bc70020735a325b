"""Helpers of the browser tests: users with passwords, and logging in through the login page."""

from __future__ import annotations

import secrets

from playwright.async_api import Page

from registry.auth import Role
from registry.auth import create_user as create_registry_user
from registry.queries import Conn


async def create_user(
    conn: Conn, username: str, role: Role | str, *, community_code: str | None = None, supplier: str | None = None
) -> str:
    """Create a user with a fresh random password and return the password."""
    password = f"pw-{secrets.token_urlsafe(12)}"
    await create_registry_user(
        conn,
        username=username,
        password=password,
        display_name=f"测试{username}",
        role=Role(role),
        community_code=community_code,
        supplier=supplier,
    )
    return password


async def login(page: Page, base_url: str, username: str, password: str) -> None:
    """Log in through the login page; returns once the browser has left it for the landing page."""
    await page.goto(f"{base_url}/ui/login")
    await page.fill("#username", username)
    await page.fill("#password", password)
    async with page.expect_navigation(url=lambda url: "/ui/login" not in url):
        await page.click("#login-submit")
