"""The kubelet's ``/containerLogs`` endpoint, so ``kubectl logs [-f] [--previous] [--tail]`` works.

The apiserver proxies ``pods/log`` to ``https://<node InternalIP>:<kubeletEndpoint.Port>``; this
server presents a certificate signed by the cluster CA (``--kubelet-certificate-authority``) and
requires the apiserver's client certificate. Exec, attach and port-forward are not implemented.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

# (namespace, pod, container, previous) -> (log file, container still running); FileNotFoundError when unknown.
LocateLog = Callable[[str, str, str, bool], tuple[str, bool]]


def tail_offset(path: str, lines: int) -> int:
    """Byte offset where the last ``lines`` lines of ``path`` start."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = pos = f.tell()
        found = 0
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            # A trailing newline ends the last line; it does not start another.
            if pos + step == end and chunk.endswith(b"\n"):
                chunk = chunk[:-1]
            idx = len(chunk)
            while True:
                idx = chunk.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
                found += 1
                if found == lines:
                    return pos + idx + 1
        return 0


def make_handler(locate: LocateLog, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            log.debug("logserver: " + format, *args)

        def _error(self, code: int, message: str) -> None:
            body = message.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path in ("/healthz", "/readyz", "/livez"):
                return self._error(200, "ok")
            parts = url.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "containerLogs":
                return self._error(404, f"{url.path}: not implemented by the process node")
            _, namespace, pod, container = parts
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                path, running = locate(namespace, pod, container, q.get("previous") == "true")
            except FileNotFoundError as exc:
                return self._error(404, str(exc))
            follow = q.get("follow") == "true" and running
            start = tail_offset(path, int(q["tailLines"])) if q.get("tailLines") else 0
            limit = int(q["limitBytes"]) if q.get("limitBytes") else None
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            try:
                with open(path, "rb") as f:
                    f.seek(start)
                    while True:
                        chunk = f.read(64 * 1024 if limit is None else min(64 * 1024, limit - sent))
                        if chunk:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                            self.wfile.flush()
                            sent += len(chunk)
                            if limit is not None and sent >= limit:
                                break
                            continue
                        if not follow or stop.is_set():
                            break
                        time.sleep(0.2)
                        # Once the container stopped, one more read drains what it wrote last.
                        _, follow = locate(namespace, pod, container, False)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, FileNotFoundError):
                pass
            return None

    return Handler


@dataclass(frozen=True)
class LogServer:
    """Where and how the endpoint listens: the node's address and port, its serving certificate and the CA of
    the apiserver's client certificate (required when set)."""

    host: str
    port: int
    cert: str
    key: str
    client_ca: str = ""

    def serve(self, locate: LocateLog, stop: threading.Event) -> None:
        server = ThreadingHTTPServer((self.host, self.port), make_handler(locate, stop))
        server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            ctx.load_verify_locations(self.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        log.info("serving /containerLogs on https://%s:%d", self.host, self.port)
        server.serve_forever(poll_interval=1)
