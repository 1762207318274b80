"""An MTA-STS policy server for tests: HTTPS on one loopback port, a certificate of the
test CA naming every `mta-sts.<domain>` it serves, and per domain what to answer at
`/.well-known/mta-sts.txt`: a policy text, an HTTP status, a redirect, an answer that
never comes (`HANG`) or one of 10 MB (`HUGE`). ``fetches`` counts requests per domain."""

from __future__ import annotations

import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Dict, Iterable, Union

HANG = "hang"
HUGE = "huge"


def policy_text(mode: str, mx: Iterable[str], max_age: int = 86400) -> str:
    lines = ["version: STSv1", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + [f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True


class PolicyServer:
    def __init__(self, ca, domains: Iterable[str]):
        self.answers: Dict[str, Union[str, int]] = {}  # domain -> policy text | HTTP status | HANG | HUGE
        self.fetches: Dict[str, int] = {}
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                domain = self.headers.get("Host", "").split(":")[0].removeprefix("mta-sts.")
                owner.fetches[domain] = owner.fetches.get(domain, 0) + 1
                answer = owner.answers.get(domain, 404)
                if self.path != "/.well-known/mta-sts.txt":
                    answer = 404
                if answer == HANG:
                    owner._stop.wait()
                    return
                if isinstance(answer, int):
                    self.send_response(answer)
                    if 300 <= answer < 400:
                        self.send_header("Location", "https://elsewhere.test/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b"x" * (10 * 1024 * 1024) if answer == HUGE else answer.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                if answer != HUGE:  # the big one has no length: it must be cut off by size
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        context = ca.server_context([f"mta-sts.{d}" for d in domains])
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mta-sts-policies", daemon=True)

    def start(self) -> "PolicyServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
