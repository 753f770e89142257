"""The real `streamlit run` server against DNS rebinding and framing: foreign Host headers, parent frames.

A page on an attacker's domain that re-resolves to 127.0.0.1 reaches the server with its own
`Host` (and `Origin`). Everything the app shows or changes goes through the WebSocket at
`/_stcore/stream`, so that is where a foreign Host must be refused. Requests are made with the
standard library only (raw sockets and http.client), exactly as a browser would send them.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import socket

import pytest

from browser_support import streamlit_server

FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8501",
    "attacker.test",
    "attacker.test:{port}",           # a rebound name keeps the app's port
    "127.0.0.1.attacker.test:{port}",  # look-alike names a suffix or prefix match would let in
    "localhost.attacker.test:{port}",
    "attacker.test.:{port}",
]
OWN_HOSTS = ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST:{port}"]
SOCKET_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `streamlit run workbench/ui/server.py` (repository config) on a free port; always stopped."""
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, WORKBENCH_HOME=str(home))
    env.pop("WORKBENCH_IMPORT_DIR", None)
    with streamlit_server(env, home / "streamlit.log") as base:
        yield int(base.rsplit(":", 1)[1])


def status_line(response: bytes) -> str:
    return response.split(b"\r\n", 1)[0].decode("latin-1")


def websocket_upgrade(port: int, host: str | None, origin: str | None) -> str:
    """Open `/_stcore/stream` as a browser would; return the server's status line ('' if it hung up)."""
    lines = ["GET /_stcore/stream HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
              "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
              "Sec-WebSocket-Protocol: streamlit"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return status_line(answer)


def http_get(port: int, path: str, host: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SOCKET_TIMEOUT_S)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host)
    conn.endheaders()
    response = conn.getresponse()
    response.body = response.read()
    conn.close()
    return response


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_host_cannot_open_the_websocket(server, host):
    host = host.format(port=server)
    # A rebinding page sends its own origin; a script without a browser sends none.
    for origin in (f"http://{host}", None):
        assert websocket_upgrade(server, host, origin) == "HTTP/1.1 403 Forbidden", (host, origin)


def test_request_without_host_cannot_open_the_websocket(server):
    assert not websocket_upgrade(server, None, None).startswith("HTTP/1.1 101")


@pytest.mark.parametrize("host", OWN_HOSTS)
def test_own_host_opens_the_websocket_and_pages(server, host):
    host = host.format(port=server)
    assert websocket_upgrade(server, host, f"http://{host}") == "HTTP/1.1 101 Switching Protocols"
    assert http_get(server, "/", host).status == 200
    health = http_get(server, "/_stcore/health", host)
    assert (health.status, health.body.strip()) == (200, b"ok")


def test_no_parent_frame_may_drive_the_app(server):
    # The frontend accepts postMessage commands (rerun, stop, auth tokens) only from these origins;
    # Streamlit's default lists every *.streamlit.app page.
    answer = http_get(server, "/_stcore/host-config", f"127.0.0.1:{server}")
    assert answer.status == 200
    assert json.loads(answer.body)["allowedOrigins"] == []


# Streamlit 1.67 checks `server.allowedHosts` on the WebSocket (and the agent API) only, and has
# no option to send anti-framing headers: workbench/ui/server.py (what `make run` serves) adds both.
@pytest.mark.parametrize("path", ["/", "/_stcore/health", "/_stcore/host-config"])
def test_foreign_host_gets_403_on_plain_http(server, path):
    for host in FOREIGN_HOSTS:
        assert http_get(server, path, host.format(port=server)).status == 403, (host, path)


def test_pages_forbid_framing(server):
    answer = http_get(server, "/", f"127.0.0.1:{server}")
    assert answer.getheader("X-Frame-Options") == "DENY"
    assert "frame-ancestors 'none'" in (answer.getheader("Content-Security-Policy") or "")
