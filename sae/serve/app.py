"""The live feature browser: the run's static browser plus JSON endpoints that run the model.

Built on Starlette under uvicorn: a small, maintained ASGI toolkit (routing, static files that refuse paths
outside their folder, a trusted-host check) with no validation or ORM layer to learn, so the whole server is this
module; uvicorn is its reference server. FastAPI would add pydantic models and generated docs the six endpoints
do not need.

Safety on a laptop: the `Host` header must be one of the server's own names (a page on another site that
rebinds its DNS name to 127.0.0.1 sends its own name, and is refused with 400); POST bodies must be JSON
(`Content-Type: application/json`, so another site's form cannot post without a CORS preflight, which is never
granted) and at most `max_body_bytes` (413); texts are capped (422); files come only from the browser folder and
`static/` (Starlette's `StaticFiles` refuses a path that resolves outside its folder: 404); the model runs on one
worker with a bounded queue (503 when full) and a request gives up after `timeout` (504). One log line per
request (`sae.serve` logger): method, path, status, milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sae.serve.inspector import Inspector
from sae.serve.worker import Busy, ModelWorker

__all__ = ["LOOPBACK_NAMES", "create_app", "inject_live"]

STATIC = Path(__file__).with_name("static")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
log = logging.getLogger("sae.serve")

_CSP = re.compile(r'(<meta\s+http-equiv="Content-Security-Policy"\s+content=")([^"]*)(")', re.I)
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def inject_live(page: str) -> str:
    """The browser's index.html with the live panel's stylesheet and script, and its policy letting it call /api."""
    if "</head>" not in page or "</body>" not in page:
        raise ValueError("the browser's index.html has no </head> or </body> to put the live panel into")

    def allow_api(m: re.Match) -> str:
        policy = m.group(2)
        return m.group(0) if "connect-src" in policy else f"{m.group(1)}{policy.rstrip('; ')}; connect-src 'self'{m.group(3)}"

    page = _CSP.sub(allow_api, page, count=1)
    page = page.replace("</head>", '<link rel="stylesheet" href="/live/live.css">\n</head>', 1)
    return page.replace("</body>", '<script src="/live/live.js"></script>\n</body>', 1)


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestLog:
    """ASGI middleware: one log line per HTTP request, whatever answered it (the host check included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            ms = (time.perf_counter() - start) * 1000
            log.info("%s %s %s %d %.1fms", client[0], scope["method"], scope["path"][:200], status, ms)


class SecurityHeaders:
    """ASGI middleware: no MIME sniffing, no framing, no caching of API answers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
                headers += [(b"referrer-policy", b"no-referrer")]
                if scope["path"].startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request's JSON object; 415 for another content type, 413 past `max_bytes`, 400 for bad JSON."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPError(415, f"the body must be JSON sent as Content-Type: application/json, got {ctype or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise HTTPError(413, f"the body is larger than the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPError(413, f"the body is larger than the limit of {max_bytes} bytes")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise HTTPError(422, "the body must be a JSON object")
    return data


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    inspector: Inspector,
    browser: str | Path | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_NAMES,
    worker: ModelWorker | None = None,
) -> Starlette:
    """The Starlette app over `inspector` (its model and dictionary, loaded once) and the browser folder `browser`
    (None: a bare page with the live panel only). `allowed_hosts`: the names the `Host` header may carry."""
    if any("*" in h for h in allowed_hosts):
        raise ValueError(f"allowed host names must be names, not patterns: {list(allowed_hosts)}")
    limits = inspector.limits
    worker = worker or ModelWorker(limits.queue_size)
    folder = Path(browser).resolve() if browser is not None else None
    if folder is not None and not (folder / "index.html").is_file():
        raise FileNotFoundError(f"no index.html in the browser folder {folder}: write it with python -m sae dashboard RUN")
    page = inject_live((folder / "index.html").read_text(encoding="utf-8")) if folder else (STATIC / "bare.html").read_text()
    headers = {"content-security-policy": _PAGE_CSP}

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers=headers)

    async def compute(fn: Callable[[], dict]) -> Response:
        try:
            fut = worker.submit(fn)
        except Busy as e:
            return _error(503, f"busy: {e}; try again shortly", {"retry-after": "1"})
        try:
            return JSONResponse(await asyncio.wait_for(asyncio.wrap_future(fut), limits.timeout))
        except asyncio.TimeoutError:
            fut.cancel()
            return _error(504, f"the model did not answer within {limits.timeout} s")
        except ValueError as e:
            return _error(422, str(e))

    def endpoint(run: Callable[[dict[str, Any]], Callable[[], dict]]) -> Callable:
        async def handle(request: Request) -> Response:
            try:
                body = await read_json(request, limits.max_body_bytes)
            except HTTPError as e:
                return _error(e.status, str(e))
            return await compute(run(body))

        return handle

    async def info(request: Request) -> Response:
        return JSONResponse(inspector.info())

    routes = [
        Route("/", index),
        Route("/index.html", index),
        Route("/api/info", info),
        Route(
            "/api/activations",
            endpoint(lambda b: lambda: inspector.activations(b.get("text"), b.get("latents"))),
            methods=["POST"],
        ),
        Route(
            "/api/steer",
            endpoint(
                lambda b: (
                    lambda: inspector.steer(
                        b.get("text"), b.get("latents"), b.get("strengths", 4.0), b.get("max_new_tokens"), b.get("seed")
                    )
                )
            ),
            methods=["POST"],
        ),
        Route(
            "/api/ablate",
            endpoint(lambda b: lambda: inspector.ablate(b.get("text"), b.get("latents"), b.get("max_new_tokens"))),
            methods=["POST"],
        ),
        Mount("/live", StaticFiles(directory=STATIC)),
    ]
    if folder is not None:
        routes.append(Mount("/", StaticFiles(directory=folder)))
    middleware = [
        Middleware(RequestLog),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
        Middleware(SecurityHeaders),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        worker.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.worker = worker
    return app
