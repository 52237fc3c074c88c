"""The web dashboard at ``/dashboard``: static files shipped in the package
(``web/static``), no server-side rendering. The page signs in with an API key and talks
to the same ``/v1``, ``/team/v1`` and ``/admin/v1`` APIs a script would.

Every response carries a Content-Security-Policy that allows this origin only: the page
loads nothing from elsewhere and cannot be made to send anything elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
# The single-page app's routes: each serves index.html, which shows the page named by the path.
PAGES = ("keys", "playground", "usage", "datasets", "fine-tuning", "evals")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (ETag), so an upgraded server's assets are used at once.
    "Cache-Control": "no-cache",
}


class DashboardStatic(StaticFiles):
    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(SECURITY_HEADERS)
        return response


router = APIRouter(include_in_schema=False)


def _index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("/dashboard")
@router.get("/dashboard/")
async def dashboard_home() -> FileResponse:
    return _index()


for _page in PAGES:
    router.add_api_route(f"/dashboard/{_page}", _index, methods=["GET"])


def attach(app, services: object) -> None:
    # The page needs no server-side service: it calls the public APIs with the user's key.
    app.include_router(router)
    app.mount("/dashboard/static", DashboardStatic(directory=STATIC_DIR), name="dashboard-static")
