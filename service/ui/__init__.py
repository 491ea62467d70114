"""`/ui`: the comparison page, static HTML/CSS/JS shipped in the package (service/ui/static/, no build step).

The page calls only the public API (`/v1/models`, `/v1/compare`, `/metrics`) from the browser; these routes serve
its three files and nothing else (a fixed table of names, never a path from the request), with a
Content-Security-Policy that allows nothing from elsewhere and no inline script or style. They are left out of the
OpenAPI document (`include_in_schema=False`): the page is not part of the API.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import Response
from fastapi.responses import RedirectResponse
from starlette.exceptions import HTTPException

from service.api.routes import Route, route

#: everything from this origin only; no inline script or style, no plugins, no framing, no form posts elsewhere.
#: `blob:` images: the preview of the picked file (an object URL made by the page's own script).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
#: the page's files: the name in the URL -> (file in static/, media type)
ASSETS = {
    "app.js": ("app.js", "text/javascript; charset=utf-8"),
    "style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE = ("index.html", "text/html; charset=utf-8")


@cache
def asset_bytes(filename: str) -> bytes:
    """A file of service/ui/static (read once; package data, so a wheel install has it)."""
    return resources.files(__package__).joinpath("static", filename).read_bytes()


def _answer(filename: str, media_type: str) -> Response:
    return Response(asset_bytes(filename), media_type=media_type, headers=SECURITY_HEADERS)


class UiEndpoints:
    """GET /ui (the page) and GET /ui/{asset} (its script and style sheet); not in the OpenAPI document."""

    def routes(self) -> list[Route]:
        return [
            route("GET", "/ui", self.page, include_in_schema=False, response_class=Response),
            route("GET", "/ui/", self.slash, include_in_schema=False, response_class=Response),
            route("GET", "/ui/{asset}", self.asset, include_in_schema=False, response_class=Response),
        ]

    async def page(self) -> Response:
        return _answer(*PAGE)

    async def slash(self) -> Response:
        # the page resolves its URLs relative to itself ("v1/models", "ui/app.js"): one address for it
        return RedirectResponse("../ui", status_code=308)

    async def asset(self, asset: str) -> Response:
        found = ASSETS.get(asset)
        if found is None:
            raise HTTPException(404, "Not Found")  # as for any unknown path (the API's error shape)
        return _answer(*found)
