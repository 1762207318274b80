"""Operator control over the broker: `mta pause`, `mta resume`, `mta reload` and `mta status`
reach every MTA process attached to the same broker (SPEC §5) through the fanout exchange
`mta.control`; each process consumes it with a private, auto-deleted queue.

A pause applies to a recipient domain (`example.com`) or to a destination key
(`provider:google`, `mx:mx1.example.net`): mail for it is held in the delay queues, not
tried and not counted as an attempt, until the pause ends (`--for`) or is lifted.
Pauses live in the memory of the running processes; a process started later does not know
them. At most `MAX_PAUSES` are kept, none longer than `MAX_PAUSE` ahead: whoever may send
commands must not be able to grow a process's memory or pause mail for years.

Theory of operation of the exchange:
- Anyone who may publish to the broker may publish on `mta.control`. With a key
  (`control: {key_env: ...}` or `{key_file: ...}`) a command is obeyed only when its body
  carries an HMAC-SHA256 of the key in the `x-mta-signature` header, its `sent` time is
  within `FRESH_FOR` of this process's clock and its `id` was not seen before (a captured
  command cannot be replayed). Everything else is ignored and counted by reason
  (`mta_control_refused_total`). Without a key every well-formed command is obeyed, and
  the process says at start that the exchange is unauthenticated.
- A command carries `reply_to`, the requester's server-named exclusive queue
  (`amq.gen-...`): a process answers there (a status snapshot, or the acknowledgement of a
  pause, resume or reload) on its publishing connection. Any other name is refused, so a
  command cannot make the MTAs publish into the lanes or any other queue of the broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import stat
import uuid
from collections.abc import Mapping

import orjson

from mta.broker import client
from mta.broker.errors import BrokerError
from mta.clock import SYSTEM
from mta.config import ConfigError, Control
from mta.broker.topology import lane_queue
from shaper.pauses import MAX_PAUSE, MAX_PAUSES, MAX_TARGET, Pauses, is_time, pause_problem  # noqa: F401 (re-exported)

log = logging.getLogger("mta.control")

CONTROL = "mta.control"
PAUSED_HOLD = 15  # seconds between looks at a paused destination's mail
SIGNATURE = "x-mta-signature"
# Seconds a signed command stays valid: broker delay plus clock skew between the operator's
# machine and the MTAs (NTP keeps it far below). Its id is remembered twice as long.
FRESH_FOR = 60.0
MAX_SEEN = 10_000  # command ids remembered against replay
REPLY_PREFIX = "amq.gen-"  # the broker's names for server-named queues; clients cannot declare them
REPLY_TIMEOUT = 10.0  # seconds for the broker to confirm an answer
REFUSALS = ("unsigned", "bad_signature", "stale", "replayed", "malformed", "reply_to", "too_large")
# The largest control message read: a command is a few hundred octets; anyone who may publish
# must not make every MTA hash and parse megabytes (refused before the HMAC and the JSON).
MAX_COMMAND = 64 * 1024
# Control messages a process holds unacknowledged (its consumer's prefetch), and waiting in its
# private queue (x-max-length, oldest dropped): a flood of commands is bounded on both sides.
CONTROL_PREFETCH = 16
CONTROL_QUEUE_MAX = 1000
LOG_EVERY = 60.0  # seconds between log lines about refused commands of one reason
COMMANDS = ("pause", "resume", "reload", "status")


# ---- keys and signatures

def load_key(settings, environ: Mapping[str, str] | None = None, section: str = "control") -> bytes | None:
    """The key named by a section's `key_env` or `key_file` (`control:`, `envelope_verp:`;
    None: no key configured); raises ConfigError when the variable or file it names is
    missing or empty."""
    environ = os.environ if environ is None else environ
    if settings.key_env:
        value = environ.get(settings.key_env, "")
        if not value:
            raise ConfigError([f"{section}.key_env: environment variable {settings.key_env} is not set or empty"])
        return value.encode()
    if settings.key_file:
        try:
            with open(settings.key_file, "rb") as fh:
                value = fh.read(1 << 16).strip()
        except OSError as exc:
            raise ConfigError([f"{section}.key_file: cannot read {settings.key_file}: {exc.strerror}"]) from None
        if not value:
            raise ConfigError([f"{section}.key_file: {settings.key_file} is empty"])
        return value
    return None


def loose_permissions(path: str) -> str | None:
    """A warning when users other than its owner have any access to a secret's file, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # the reader of the file reports a missing one
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is accessible to group or other users (mode {stat.S_IMODE(mode):04o}); chmod 600 it"
    return None


def secret_file_warnings(config) -> list[str]:
    """Warnings, with key paths, for route password files and the control key file that
    users other than the owner may read."""
    files = [(f"routes[{i}].password_file", r.password_file) for i, r in enumerate(config.routes) if r.password_file]
    if config.control.key_file:
        files.append(("control.key_file", config.control.key_file))
    if config.envelope_verp is not None and config.envelope_verp.key_file:
        files.append(("envelope_verp.key_file", config.envelope_verp.key_file))
    return [f"{where}: {note}" for where, path in files if (note := loose_permissions(path)) is not None]


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def command_body(command: str, **fields) -> dict:
    """A new command: a fresh id and the time it was sent, both covered by the signature."""
    return {"command": command, "id": uuid.uuid4().hex, "sent": SYSTEM.wall(),
            **{k: v for k, v in fields.items() if v is not None}}


def message(body: dict, key: bytes | None) -> tuple[bytes, dict | None]:
    """A command's body and headers, signed when there is a key."""
    raw = orjson.dumps(body)
    return raw, ({SIGNATURE: sign(key, raw)} if key else None)


class Gate:
    """Which control messages a process obeys, and a count of the refused ones by reason."""

    def __init__(self, key: bytes | None, *, fresh_for: float = FRESH_FOR) -> None:
        self.key = key
        self.fresh_for = fresh_for
        self.refused = dict.fromkeys(REFUSALS, 0)
        self._seen: dict[str, float] = {}  # id -> when it may be forgotten, in arrival order
        self._logged: dict[str, float] = {}

    def admit(self, body: bytes, headers: Mapping | None, now: float) -> dict | None:
        """The command in a control message, or None (refused: counted and logged)."""
        if len(body) > MAX_COMMAND:
            return self.refuse("too_large", now, f"{len(body)} octets, more than {MAX_COMMAND}")
        if self.key is not None:
            signature = (headers or {}).get(SIGNATURE)
            if isinstance(signature, bytes):
                signature = signature.decode("ascii", "replace")
            if not isinstance(signature, str) or not signature:
                return self.refuse("unsigned", now)
            # as bytes: compare_digest refuses a str that is not ASCII, and a forger chooses it
            if not hmac.compare_digest(signature.encode("utf-8", "replace"), sign(self.key, body).encode()):
                return self.refuse("bad_signature", now)
        try:
            command = orjson.loads(body)
        except orjson.JSONDecodeError:
            return self.refuse("malformed", now, "not JSON")
        if not isinstance(command, dict) or command.get("command") not in COMMANDS:
            return self.refuse("malformed", now, f"unknown command {str(command)[:100]!r}")
        if not is_time(command.get("until")):  # checked once here: nothing after formats or compares it blindly
            return self.refuse("malformed", now, f"its end {str(command.get('until'))[:40]!r} is not a time")
        if self.key is not None:
            return self._fresh(command, now)
        return command

    def _fresh(self, command: dict, now: float) -> dict | None:
        sent, ident = command.get("sent"), command.get("id")
        if isinstance(sent, bool) or not isinstance(sent, (int, float)) or not isinstance(ident, str):
            return self.refuse("malformed", now, "no sent time or id")
        if not abs(now - sent) <= self.fresh_for:
            return self.refuse("stale", now, f"sent {abs(now - sent):.0f} s {'ago' if sent < now else 'ahead'}, "
                                             f"more than {self.fresh_for:.0f} s from this clock")
        while self._seen:  # forget ids that can no longer pass the freshness test
            oldest = next(iter(self._seen))
            if self._seen[oldest] > now:
                break
            del self._seen[oldest]
        if ident in self._seen:
            return self.refuse("replayed", now, f"id {ident[:40]!r} seen before")
        if len(self._seen) >= MAX_SEEN:
            return self.refuse("replayed", now, f"more than {MAX_SEEN} commands within {2 * self.fresh_for:.0f} s")
        self._seen[ident] = now + 2 * self.fresh_for
        return command

    def reply_queue(self, command: dict, now: float) -> str | None:
        """Where to answer `command`: only a server-named queue of the requester."""
        reply_to = command.get("reply_to")
        if reply_to is None:
            return None
        if isinstance(reply_to, str) and reply_to.startswith(REPLY_PREFIX):
            return reply_to
        self.refuse("reply_to", now, f"answer to {str(reply_to)[:100]!r} refused, only to {REPLY_PREFIX}* queues")
        return None

    def refuse(self, reason: str, now: float, detail: str = "") -> None:
        """Count it; say so at most once a minute per reason (a flood must not flood the log)."""
        self.refused[reason] += 1
        if now - self._logged.get(reason, -math.inf) >= LOG_EVERY:
            self._logged[reason] = now
            log.warning("ignored a control message (%s%s); %d refused for this reason since start",
                        reason.replace("_", " "), f": {detail}" if detail else "", self.refused[reason])
        return None


def acknowledgement(command: dict, instance: str, ok: bool, error: str | None = None) -> dict:
    """What a process answers to pause, resume and reload: done, or refused and why."""
    return {"request": command.get("id"), "instance": instance, "command": command.get("command"),
            "target": command.get("target"), "ok": ok, "error": error}


def gate_for(settings: Control, environ: Mapping[str, str] | None = None) -> Gate:
    """The gate of a starting process; ConfigError when the configured key cannot be read."""
    key = load_key(settings, environ)
    if key is None:
        log.warning("no control key configured (control.key_env or control.key_file): the control exchange "
                    "%s is unauthenticated, anyone who may publish to the broker can pause, resume and reload "
                    "every MTA", CONTROL)
    return Gate(key)


async def answer(channel, reply_to: str, doc: dict) -> None:
    """Publish an answer on the publishing connection's channel (confirmed, best effort:
    a requester that left simply misses it; the broker drops it with its queue)."""
    try:
        await client.publish_json(channel, reply_to, orjson.dumps(doc), REPLY_TIMEOUT)
    except BrokerError as exc:  # lost, refused (the requester's queue is gone) or not confirmed in time
        log.warning("could not answer a control command on %s: %s; the requester will not count this MTA",
                    reply_to, exc)


# ---- the CLI's side

async def declare(channel):
    """The control exchange (an aio-pika channel's)."""
    return await client.declare_fanout(channel, CONTROL)


queue_numbers = client.queue_numbers  # depth and consumers of a queue (None: not declared)


async def ask(connection, body: dict, key: bytes | None, expected: int, wait: float) -> list[dict]:
    """Publish a command (signed when there is a key) with a private server-named reply
    queue, and collect the answers until `expected` came (0: unknown) or `wait` s passed."""
    answers: list[dict] = []
    got_all = asyncio.Event()

    def on_reply(raw: bytes) -> None:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(doc, dict) and doc.get("request") == body["id"]:
            answers.append(doc)
            if expected and len(answers) >= expected:
                got_all.set()

    channel, reply_to = await client.reply_queue(connection, on_reply)  # named amq.gen-... by the broker
    raw, headers = message({**body, "reply_to": reply_to}, key)
    await client.publish_fanout(channel, CONTROL, raw, headers, timeout=30)
    try:
        await asyncio.wait_for(got_all.wait(), wait)
    except asyncio.TimeoutError:
        pass
    return list(answers)


async def send(url: str, command: str, target: str | None = None, seconds: float | None = None, *,
               key: bytes | None = None, wait: float = 3.0) -> tuple[list[dict], int]:
    """Publish one control command for every running MTA; (their acknowledgements, the MTAs
    expected to answer: consumers on the bulk lane)."""
    until = SYSTEM.wall() + seconds if seconds is not None else None
    body = command_body(command, target=target.lower() if target else None, until=until)
    async with client.connected(url) as connection:
        expected = ((await queue_numbers(connection, lane_queue("bulk"))) or {}).get("consumers", 0)
        return await ask(connection, body, key, expected, wait), expected
