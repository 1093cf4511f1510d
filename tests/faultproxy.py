"""A small fault-injecting reverse proxy for tests: stdlib only, bound to 127.0.0.1.

Each request is read whole, shown to a ``rule`` that may pick a :class:`Fault` for it, and either
answered with that fault or forwarded to the upstream server (one fresh upstream connection per
request) and its reply passed back. Faults:

* ``status(code)``: reply ``code`` with a JSON MLflow error body, never touching the upstream;
* ``reset``: drop the client connection with a TCP RST, never touching the upstream;
* ``close``: close the client connection without a reply (FIN), never touching the upstream;
* ``lose_reply``: forward the request (it takes effect upstream), then reset the connection
  instead of replying: the client cannot know its call landed.

Every request is logged as ``(method, path, fault name or None)`` and every Authorization header
seen is kept, so tests can assert what the client really sent.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultProxy", "Request"]

_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "ENDPOINT_NOT_FOUND",
    408: "TEMPORARILY_UNAVAILABLE",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "TEMPORARILY_UNAVAILABLE",
}


@dataclass(frozen=True)
class Fault:
    kind: str  # "status", "reset", "close" or "lose_reply"
    status: int = 0
    json_body: bool = True

    @property
    def name(self) -> str:
        return f"{self.status}" if self.kind == "status" else self.kind

    @staticmethod
    def of(status: int, json_body: bool = True) -> Fault:
        return Fault("status", status, json_body)


RESET = Fault("reset")
CLOSE = Fault("close")
LOSE_REPLY = Fault("lose_reply")


@dataclass(frozen=True)
class Request:
    """What the rule sees: the n-th request (from 1), its method, path (with query) and body."""

    n: int
    method: str
    path: str
    body: bytes

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]


Rule = Callable[[Request], Fault | None]


class FaultProxy:
    """``with FaultProxy(upstream_url, rule) as proxy:`` then talk to ``proxy.url``."""

    def __init__(self, upstream: str, rule: Rule | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rule: Rule = rule or (lambda _req: None)
        self.log: list[tuple[str, str, str | None]] = []
        self.authorization: set[str] = set()
        self._lock = threading.Lock()
        self._count = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _serve(self) -> None:
                body = self._read_body()
                auth = self.headers.get("Authorization")
                with proxy._lock:
                    proxy._count += 1
                    req = Request(proxy._count, self.command, self.path, body)
                    if auth:
                        proxy.authorization.add(auth)
                fault = proxy.rule(req)
                with proxy._lock:
                    proxy.log.append((req.method, req.path, fault.name if fault else None))
                if fault is None:
                    self._forward(body)
                elif fault.kind == "status":
                    self._reply_error(fault)
                elif fault.kind == "lose_reply":
                    with contextlib.suppress(OSError):
                        self._upstream(body)
                    self._drop(rst=True)
                else:
                    self._drop(rst=fault.kind == "reset")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _upstream(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=120
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, resp.reason, resp.getheaders(), data
                finally:
                    conn.close()

            def _forward(self, body: bytes) -> None:
                try:
                    status, reason, headers, data = self._upstream(body)
                except OSError:
                    # The upstream is down: behave as it would, a refused connection.
                    self._drop(rst=True)
                    return
                self.send_response(status, reason)
                for key, value in headers:
                    if key.lower() not in _HOP and key.lower() not in ("date", "server"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reply_error(self, fault: Fault) -> None:
                if fault.json_body:
                    code = _CODES.get(fault.status, "INTERNAL_ERROR")
                    payload = json.dumps(
                        {"error_code": code, "message": f"injected HTTP {fault.status}"}
                    ).encode()
                    kind = "application/json"
                else:
                    payload = f"injected HTTP {fault.status}\n".encode()
                    kind = "text/plain"
                self.send_response(fault.status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                if fault.status in (429, 503):
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self, rst: bool) -> None:
                with contextlib.suppress(OSError):
                    if rst:
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    self.rfile.close()  # its reference would keep the socket open
                    self.connection.close()
                self.close_connection = True

            def finish(self) -> None:
                with contextlib.suppress(OSError, ValueError):
                    super().finish()

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # dropped connections are the point here

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def faults(self) -> dict[str, int]:
        """How many of each fault were injected."""
        out: dict[str, int] = {}
        with self._lock:
            for _m, _p, fault in self.log:
                if fault is not None:
                    out[fault] = out.get(fault, 0) + 1
        return out

    def requests(self, route_part: str = "") -> list[tuple[str, str, str | None]]:
        with self._lock:
            return [entry for entry in self.log if route_part in entry[1]]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
