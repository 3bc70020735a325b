"""Pages of the control-room UI and their static assets.

``/ui/<name>`` serves ``static/<name>.html`` to a logged-in person and redirects anyone else to
``/ui/login?next=<path>``; the login page and the assets under ``/ui/static/`` are public (they hold no
data). ``/ui`` sends each role to its landing page. Every page fetches its data from authenticated APIs,
so the redirect is a convenience, not the access control.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from registry.auth import SESSION_COOKIE, Role, User, user_for_session
from registry.deps import ConnDep

STATIC_DIR = Path(__file__).parent / "static"

#: Where ``/ui`` sends each role.
LANDING: dict[Role, str] = {
    Role.ADMIN: "board",
    Role.DUTY_OPERATOR: "board",
    Role.EMERGENCY_MANAGEMENT: "board",
    Role.COMMUNITY_STAFF: "county",
    Role.HOUSING_BUREAU: "progress",
    Role.INSTALLER: "progress",
}

_PAGE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,40}$")
_PUBLIC_PAGES = frozenset({"login"})
# Pages change with every deployment and carry no data; always revalidate them.
_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(prefix="/ui", include_in_schema=False)
# StaticFiles does the file serving (ETag, Last-Modified, 304, path traversal checks); it is called
# from a route because routers cannot carry mounts into the app.
_static = StaticFiles(directory=STATIC_DIR)


async def _session_user(request: Request, conn: ConnDep) -> User | None:
    token = request.cookies.get(SESSION_COOKIE)
    return None if not token else await user_for_session(conn, token=token)


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target, safe='')}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("")
@router.get("/")
async def landing(request: Request, conn: ConnDep) -> Response:
    """Send the caller to its role's landing page (or to the login page)."""
    user = await _session_user(request, conn)
    if user is None:
        return RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    return RedirectResponse(f"/ui/{LANDING[user.role]}", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/static/{path:path}")
async def static_asset(path: str, request: Request) -> Response:
    """A stylesheet, script or image of the UI."""
    response = await _static.get_response(path, request.scope)
    response.headers.setdefault("Cache-Control", "no-cache")
    return response


@router.get("/{name}")
async def page(name: str, request: Request, conn: ConnDep) -> Response:
    """A page of the UI; people who are not logged in go to the login page first."""
    file = STATIC_DIR / f"{name}.html"
    if not _PAGE_NAME.fullmatch(name) or not file.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no page {name!r}")
    if name not in _PUBLIC_PAGES and await _session_user(request, conn) is None:
        return _to_login(request)
    return FileResponse(file, media_type="text/html; charset=utf-8", headers=_NO_CACHE)
