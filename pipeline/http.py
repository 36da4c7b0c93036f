"""The daemon's one HTTP server: /metrics, /healthz, /readyz, and routes others add (the live view)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.errors import UserError

log = logging.getLogger(__name__)

# A route answers (status, body, content type). A stream route (MJPEG) is given the request handler and
# the rest of the path after its prefix, and writes the response itself.
Route = Callable[[], tuple[int, bytes, str]]
StreamRoute = Callable[[BaseHTTPRequestHandler, str], None]


class Access(Protocol):
    def protects(self, path: str) -> bool: ...
    def allows(self, handler: BaseHTTPRequestHandler) -> bool: ...


class HttpServer:
    def __init__(self, host: str, port: int, registry, routes: dict[str, Route] | None = None,
                 streams: dict[str, StreamRoute] | None = None, access: Access | None = None):
        table: dict[str, Route] = {
            "/metrics": lambda: (200, generate_latest(registry), CONTENT_TYPE_LATEST),
            "/healthz": lambda: (200, b"ok\n", "text/plain; charset=utf-8"),
        }
        table.update(routes or {})
        self.routes = table
        prefixes = dict(streams or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if access is not None and access.protects(path) and not access.allows(self):
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="perceptd", charset="UTF-8"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                for prefix, stream in prefixes.items():
                    if path.startswith(prefix):
                        stream(self, path[len(prefix):])
                        return
                route = table.get(path)
                if route is None:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")
                    return
                try:
                    code, body, ctype = route()
                except Exception:
                    log.exception("HTTP %s failed", self.path)
                    code, body, ctype = 500, b"internal error\n", "text/plain; charset=utf-8"
                self._send(code, body, ctype)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):  # scrapes every few seconds would flood the log
                log.debug("%s %s", self.address_string(), fmt % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UserError(f"metrics: cannot listen on {host}:{port} ({exc.strerror}); set metrics.port "
                            "(or --metrics-port) to a free port, or metrics.enabled: false") from None
        self._server.daemon_threads = True
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (health: /healthz, /readyz)", self.host, self.port)

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which may never have started
            self._server.shutdown()
        self._server.server_close()
