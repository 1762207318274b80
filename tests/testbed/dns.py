"""A private dnsmasq answering only the records a test configures (see TESTBED.md).

``records`` are dnsmasq option lines without the leading ``--`` (``mx-host=...``,
``host-record=...``, ``dns-rr=...``, ``txt-record=...``); ``standard_zone()`` builds the
zone every integration test relies on.  Every other name under ``.test`` is NXDOMAIN
(``local=/test/``); nothing is forwarded anywhere (``no-resolv``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
from typing import Iterable, List, Optional

from .util import free_port, port_is_free, tail

# Addresses of the standard zone (the sink farm listens on all of these but DEAD_MX).
OK_MX = {1: "127.0.1.1", 2: "127.0.1.2", 3: "127.0.1.3"}
SHARED_MX = "127.0.1.4"
FAILOVER_GOOD_MX = "127.0.1.5"
FAILOVER_DEAD_MX = "127.0.1.250"      # nothing listens here
AMX = "127.0.1.6"


def bulk_ip(i: int) -> str:
    """Address of the MX of ``d{i}.test`` (127.0.2.(i+1)); i < 254."""
    return f"127.0.2.{i + 1}"


def standard_sink_addresses(n_bulk_domains: int = 100) -> List[str]:
    return ([OK_MX[1], OK_MX[2], OK_MX[3], SHARED_MX, FAILOVER_GOOD_MX, AMX]
            + [bulk_ip(i) for i in range(n_bulk_domains)])


def standard_zone(n_bulk_domains: int = 100) -> List[str]:
    if not 0 <= n_bulk_domains <= 254:
        raise ValueError("n_bulk_domains must be within 0..254")
    rr: List[str] = []
    for n, ip in OK_MX.items():
        rr += [f"mx-host=ok{n}.test,mx.ok{n}.test,10", f"host-record=mx.ok{n}.test,{ip}"]
    rr += ["mx-host=shared-a.test,mx.shared.test,10",
           "mx-host=shared-b.test,mx.shared.test,10",
           f"host-record=mx.shared.test,{SHARED_MX}"]
    rr += ["mx-host=failover.test,mx1.failover.test,10",
           "mx-host=failover.test,mx2.failover.test,20",
           f"host-record=mx1.failover.test,{FAILOVER_DEAD_MX}",
           f"host-record=mx2.failover.test,{FAILOVER_GOOD_MX}"]
    # implicit MX: an A record and no MX
    rr += [f"host-record=amx.test,{AMX}"]
    # RFC 7505 null MX: preference 0, exchange "." (raw RDATA 0000 00)
    rr += ["dns-rr=nullmx.test,15,000000"]
    # MX host that exists (it has a TXT record) but has no address: NOERROR/NODATA for A
    rr += ["mx-host=noaddr.test,mx.noaddr.test,10",
           'txt-record=mx.noaddr.test,"no address here"']
    for i in range(n_bulk_domains):
        rr += [f"mx-host=d{i}.test,mx.d{i}.test,10", f"host-record=mx.d{i}.test,{bulk_ip(i)}"]
    return rr


def txt_record(name: str, text: str) -> str:
    """A ``txt-record=`` line for ``text`` of any length: character-strings of at most 255
    octets (RFC 1035), which DKIM verifiers join (a 2048-bit RSA key needs two)."""
    parts = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return f"txt-record={name}," + ",".join(f'"{p}"' for p in parts)


def query_txt(port: int, name: str) -> bytes | None:
    """The TXT record at ``name`` from the server on ``port``, strings joined; None if absent."""
    import dns.message
    import dns.query
    import dns.rdatatype
    reply = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=port, timeout=2)
    for rrset in reply.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            return b"".join(b"".join(rr.strings) for rr in rrset)
    return None


class DnsError(RuntimeError):
    pass


class Dnsmasq:
    def __init__(self, port: Optional[int] = None, records: Iterable[str] = (),
                 workdir: Optional[str] = None, log_queries: bool = True, ttl: int = 5):
        self._auto_port = port is None
        self.ttl = ttl  # of every answer: short, so tests that change the zone see it soon
        self.port = port if port is not None else free_port(udp=True)
        self.records = list(records)
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="mta-dns-")
        self.conf_file = os.path.join(self.workdir, "dnsmasq.conf")
        self.log_file = os.path.join(self.workdir, "dnsmasq.log")
        self.out_file = os.path.join(self.workdir, "dnsmasq.out")
        self.log_queries = log_queries
        self._proc: Optional[subprocess.Popen] = None
        self._atexit = False
        self._started = False

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def _write_conf(self) -> None:
        lines = ["# private test zone, written by tests/testbed/dns.py"] + self.records
        with open(self.conf_file, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def command(self) -> List[str]:
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not os.access(binary, os.X_OK):
            raise DnsError("dnsmasq not found: install the Debian package dnsmasq "
                           "(bash scripts/setup.sh does it)")
        cmd = [binary, "-k", f"--port={self.port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", "--local=/test/",
               f"--local-ttl={self.ttl}", "--cache-size=0", "--no-negcache", "--pid-file",
               f"--conf-file={self.conf_file}"]
        if os.geteuid() == 0:
            cmd.append("--user=root")    # keep root: no privilege drop, log file stays writable
        if self.log_queries:
            cmd += ["--log-queries", f"--log-facility={self.log_file}"]
        return cmd

    def start(self, timeout: float = 15.0) -> "Dnsmasq":
        """Start and wait until it answers. A port picked free here can be taken by another
        process before dnsmasq binds it (parallel test runs): then, on the first start
        only (later ones keep the port the configs name), pick another."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except DnsError:
                if not self._auto_port or self._started or attempt == 2 \
                        or port_is_free(self.port, udp=True):
                    raise
                self.port = free_port(udp=True)
        return self

    def _start(self, timeout: float) -> "Dnsmasq":
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._write_conf()
        out = open(self.out_file, "ab")
        try:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise DnsError(f"dnsmasq exited with {self._proc.returncode}:\n"
                               f"{tail(self.out_file)}\n{tail(self.log_file)}")
            if self.answers():
                self._started = True
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise DnsError(f"dnsmasq on port {self.port} did not answer within "
                               f"{timeout}s\n{tail(self.out_file)}\n{tail(self.log_file)}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """True when the server answers a query for a local name (any rcode)."""
        import dns.message
        import dns.query
        q = dns.message.make_query("probe.test.", "A")
        try:
            dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.5)
            return True
        except Exception:
            return False

    def resolver(self):
        """A dnspython resolver pointed at this server."""
        import dns.resolver
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = ["127.0.0.1"]
        r.port = self.port
        r.timeout = 2.0
        r.lifetime = 4.0
        r.cache = None
        return r

    def reload(self, records: Iterable[str]) -> None:
        """Replace the records (restart: dnsmasq re-reads only hosts files on SIGHUP)."""
        self.records = list(records)
        self.stop(remove=False)
        self.start()

    def stop(self, remove: bool = True) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        if remove and self._own_workdir and os.environ.get("MTA_TEST_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Dnsmasq":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultyDns:
    """A UDP DNS front for a real server: names under a suffix in ``servfail`` get
    SERVFAIL, names under one in ``silent`` get no answer at all (a timeout); everything
    else is relayed to the server at ``127.0.0.1:upstream_port`` and its reply returned.
    One thread; ``queries`` counts the queries seen per suffix rule.

    Names under a suffix in ``authentic`` come back with the AD bit set, as a validating
    resolver answers for a DNSSEC-signed zone (dnsmasq's own zone is unsigned): the MTA
    with ``dns.dnssec: true`` believes it, which is what DANE's tests need."""

    def __init__(self, upstream_port: int, servfail: Iterable[str] = (),
                 silent: Iterable[str] = (), authentic: Iterable[str] = ()):
        import socket
        import threading
        self.upstream_port = upstream_port
        self.servfail = tuple(s.lower().rstrip(".") + "." for s in servfail)
        self.silent = tuple(s.lower().rstrip(".") + "." for s in silent)
        self.authentic = tuple(s.lower().rstrip(".") + "." for s in authentic)
        self.queries: dict = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"faultydns-{self.port}",
                                        daemon=True)

    def start(self) -> "FaultyDns":
        self._thread.start()
        return self

    def _serve(self) -> None:
        import socket
        import dns.message
        import dns.query
        import dns.rcode
        while not self._stop.is_set():
            try:
                wire, peer = self._sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(wire)
                name = query.question[0].name.to_text().lower()
            except Exception:
                continue
            rule = next((s for s in self.servfail + self.silent
                         if name == s or name.endswith("." + s)), None)
            if rule is not None:
                self.queries[rule] = self.queries.get(rule, 0) + 1
            if rule in self.silent:
                continue
            if rule in self.servfail:
                reply = dns.message.make_response(query)
                reply.set_rcode(dns.rcode.SERVFAIL)
                self._sock.sendto(reply.to_wire(), peer)
                continue
            try:
                answer = dns.query.udp(query, "127.0.0.1", port=self.upstream_port, timeout=2)
            except Exception:
                continue
            if any(name == s or name.endswith("." + s) for s in self.authentic):
                import dns.flags
                answer.flags |= dns.flags.AD
            self._sock.sendto(answer.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> "FaultyDns":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
