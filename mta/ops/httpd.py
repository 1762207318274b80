"""The metrics endpoint's HTTP server: prometheus_client's exposition at /metrics (and
every other path, as before), the operator's console under /console. A threaded WSGI
server in a daemon thread, as prometheus_client's own `start_http_server` builds it: a
slow page never holds up a scrape, and nothing here runs on the event loop."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass  # a request log per scrape is noise; the console logs what it changes


def app_for(registry, console=None):
    from prometheus_client import make_wsgi_app

    metrics = make_wsgi_app(registry)
    if console is None:
        return metrics

    def dispatch(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/console" or path.startswith("/console/"):
            return console(environ, start_response)
        return metrics(environ, start_response)

    return dispatch


def start(address: str, port: int, registry, console=None) -> WSGIServer:
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in address else socket.AF_INET})
    httpd = make_server(address.strip("[]"), port, app_for(registry, console), server_class, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
    return httpd
