"""The console's HTTP side: a WSGI app served next to /metrics by the metrics endpoint's
threaded server (mta.ops.metrics), so every request runs in a thread of its own.

The engine's data changes on its event loop, so a page never reads it from the HTTP
thread: the status snapshot is computed on the loop (`run_coroutine_threadsafe`, with a
timeout) and handed over whole. The event store is read here, with this app's own SQLite
connection, opened per request (a connection per thread is what sqlite3 wants).

Pause and resume (only with `console.allow_pause: true`) are POST forms with a CSRF token
and do what `mta pause` and `mta resume` do: a (signed) control message on the broker, so
every MTA obeys, sent from the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import secrets
from urllib.parse import parse_qs

from mta.console import pages
from mta.console.auth import Gate

log = logging.getLogger("mta.console")

SNAPSHOT_TIMEOUT = 5.0
CONTROL_WAIT = 3.0  # seconds the MTAs get to acknowledge a pause or resume
LOOKUP_DAYS = 30
MAX_FORM = 4096  # octets of a POST body read at most
MAX_QUERY = 1000  # characters of a lookup (an id is at most 1,000)
HEADERS = [("Content-Security-Policy", pages.CSP), ("X-Content-Type-Options", "nosniff"),
           ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"), ("X-Frame-Options", "DENY")]


class Busy(Exception):
    """The engine's loop did not hand over a snapshot in time: 503, not a stuck thread."""


class Console:
    def __init__(self, engine, loop: asyncio.AbstractEventLoop, *, store_path: str | None) -> None:
        self.engine = engine
        self.loop = loop
        self.settings = engine.config.console
        self.gate = Gate(engine.config.metrics.address, self.settings.users)
        self.store_path = store_path
        self.csrf = secrets.token_urlsafe(32)  # this process's; a form from another process is refused
        if self.gate.refused:
            log.error("%s", self.gate.refused)

    # ---- data

    def snapshot(self, target: str | None = None) -> dict:
        """The status snapshot (with `target`, that destination in detail too), taken on the loop."""
        from mta.ops.status import snapshot

        async def take() -> dict:
            return snapshot(self.engine, target)

        future = asyncio.run_coroutine_threadsafe(take(), self.loop)
        try:
            return future.result(SNAPSHOT_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Busy(f"the engine did not answer within {SNAPSHOT_TIMEOUT:g} s (its event loop is busy "
                       "or stopping); try again") from None

    def _store(self):
        if self.store_path is None:
            return None
        from mta.tracking import open_reader

        return open_reader(self.engine.config.tracking, self.store_path)

    def events(self, query: str) -> list[dict]:
        store = self._store()
        if store is None:
            return []
        since = self.engine.clock() - LOOKUP_DAYS * 86400
        try:
            if "@" in query:
                return store.by_recipient(query, since) or store.by_id(query, since)
            return store.by_id(query, since)
        finally:
            store.close()

    def stuck(self) -> tuple[list[dict] | None, float]:
        older = self.engine.config.tracking.stuck_after
        store = self._store()
        if store is None:
            return None, older
        try:
            return store.stuck(older, self.engine.clock()), older
        finally:
            store.close()

    def control(self, command: str, target: str, seconds: float | None) -> tuple[int, int, list[str]]:
        """(acknowledged, expected, refusals) of a pause or resume sent to every MTA."""
        from mta.ops import control

        config = self.engine.config
        key = control.load_key(config.control)
        future = asyncio.run_coroutine_threadsafe(
            control.send(config.broker.url, command, target, seconds, key=key, wait=CONTROL_WAIT), self.loop)
        acks, expected = future.result(CONTROL_WAIT + 15)
        refused = [f"{a.get('instance')}: {a.get('error')}" for a in acks if not a.get("ok")]
        return sum(1 for a in acks if a.get("ok")), expected, refused

    # ---- HTTP

    def __call__(self, environ, start_response):
        try:
            status, body, extra = self.handle(environ)
        except Busy as exc:
            status, body, extra = "503 Service Unavailable", pages.message_page("Busy", str(exc)), [("Retry-After", "5")]
        except Exception:  # a page that fails says so, the endpoint keeps serving
            log.exception("console: %s failed", environ.get("PATH_INFO"))
            status, body, extra = "500 Internal Server Error", pages.message_page("Error", "this page failed; "
                                                                                  "see the MTA's log"), []
        data = body.encode("utf-8")
        start_response(status, [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(data))),
                                *HEADERS, *extra])
        return [data]

    def handle(self, environ) -> tuple[str, str, list]:
        if not self.settings.enabled:
            return "404 Not Found", pages.message_page("Not found", "the console is turned off (console.enabled)"), []
        if self.gate.refused:
            return "403 Forbidden", pages.message_page("Forbidden", self.gate.refused), []
        user = self.gate.admit(environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_HOST"))
        if user is None:
            challenge = [("WWW-Authenticate", 'Basic realm="mta console", charset="UTF-8"')] if self.gate.hashes else []
            return "401 Unauthorized", pages.message_page("Unauthorized", "a login is required"), challenge
        path = environ.get("PATH_INFO", "").rstrip("/") or "/console"
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "POST":
            return self.post(path, environ, user)
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", pages.message_page("Not allowed", f"{method} is not served"), []
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        return self.get(path, query)

    def get(self, path: str, query: dict) -> tuple[str, str, list]:
        if path == "/console/message":
            q = query.get("q", "").strip()[:MAX_QUERY]
            return "200 OK", pages.messages(q, self.events(q) if q else [], LOOKUP_DAYS, self.engine.metrics.instance), []
        if path == "/console/stuck":
            found, older = self.stuck()
            if found is None:
                return "200 OK", pages.message_page("Stuck messages", "tracking is off (tracking.enabled)"), []
            return "200 OK", pages.stuck(found, older, self.engine.clock(), self.engine.metrics.instance), []
        if path not in ("/console", "/console/destinations", "/console/destination", "/console/pauses"):
            return "404 Not Found", pages.message_page("Not found", f"no page {path}", back="/console"), []
        key = query.get("key", "")
        snap = self.snapshot(key[:300] if path == "/console/destination" and key else None)
        if path == "/console":
            paused = sum(1 for d in snap["destinations"] if d["state"] == "paused")
            store = self._store()
            try:
                stuck = None if store is None else store.count_stuck(self.engine.config.tracking.stuck_after,
                                                                     snap["now"])
            finally:
                if store is not None:
                    store.close()
            return "200 OK", pages.overview(snap, paused, stuck), []
        if path == "/console/destinations":
            return "200 OK", pages.destinations(snap), []
        if path == "/console/pauses":
            return "200 OK", pages.pauses(snap, self.settings.allow_pause, self.csrf), []
        html = pages.destination(snap, key)
        if html is None:
            return "404 Not Found", pages.message_page(
                "Not found", f"{key} is not an active destination (nothing queued, connected or held, and in "
                             "normal mode)", snap["instance"], back="/console/destinations"), []
        return "200 OK", html, []

    def post(self, path: str, environ, user: str) -> tuple[str, str, list]:
        if path not in ("/console/pause", "/console/resume"):
            return "404 Not Found", pages.message_page("Not found", f"no form {path}"), []
        if not self.settings.allow_pause:
            return "403 Forbidden", pages.message_page("Forbidden", "the console is read-only "
                                                                    "(console.allow_pause is false)"), []
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), MAX_FORM)
        except ValueError:
            length = 0
        form = {k: v[0] for k, v in parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace")).items()}
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.csrf.encode()):
            return "403 Forbidden", pages.message_page("Forbidden", "the form is stale or foreign (CSRF token); "
                                                                    "reload the page", back="/console/pauses"), []
        target = form.get("target", "").strip()
        if not target or len(target) > 255:
            return "400 Bad Request", pages.message_page("Bad request", "name a domain or destination",
                                                         back="/console/pauses"), []
        command = path.rsplit("/", 1)[1]
        seconds = None
        if command == "pause" and form.get("duration", "").strip():
            from mta.ops.control import MAX_PAUSE
            from shaper.units import Duration

            try:
                seconds = Duration.parse(form["duration"].strip()).seconds
            except ValueError as exc:
                return "400 Bad Request", pages.message_page("Bad request", f"for: {exc}", back="/console/pauses"), []
            if seconds > MAX_PAUSE:
                return "400 Bad Request", pages.message_page("Bad request", "longer than the longest pause",
                                                             back="/console/pauses"), []
        done, expected, refused = self.control(command, target, seconds)
        log.warning("console: %s %s%s by %s: acknowledged by %d MTA(s) of %d", command, target,
                    f" for {seconds:g}s" if seconds else "", user or "(loopback)", done, expected)
        text = f"{command} {target}: acknowledged by {done} MTA(s)" + (f" of {expected}" if expected else "")
        if refused:
            text += "; refused by " + "; ".join(refused)
        return "200 OK", pages.message_page(command.capitalize(), text, self.engine.metrics.instance,
                                            back="/console/pauses"), []
