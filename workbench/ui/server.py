"""HTTP entry point (`streamlit run workbench/ui/server.py`): the app behind a Host check and no-framing headers."""
from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from streamlit.web.server.starlette.starlette_websocket import is_host_allowed

APP = Path(__file__).resolve().with_name("app.py")
# Sent with every HTTP answer: no page may frame the app (clickjacking), no MIME sniffing.
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class HostAndFrameGuard:
    """ASGI middleware: `server.allowedHosts` on every path (Streamlit checks only the WebSocket)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host")
        if not is_host_allowed(host.decode("latin-1") if host else None):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await PlainTextResponse("Host not allowed", status_code=403)(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message.setdefault("headers", []))
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        return await self.app(scope, receive, send_with_headers)


app = st.App(APP, middleware=[Middleware(HostAndFrameGuard)])
