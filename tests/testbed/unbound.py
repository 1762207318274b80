"""A private DNSSEC-validating resolver for DANE's tests: Debian's `unbound` serving a zone
signed here with `ldns-signzone` (keys made by `ldns-keygen` for this run) as an
authoritative zone it validates against its own trust anchor, plus unsigned zones it
answers without the AD bit. Nothing is forwarded anywhere; every other name fails.

``ValidatingResolver(signed={"signed.test": [RR lines]}, unsigned={"plain.test": [...]})``;
RR lines are zone-file lines relative to the zone (``"mx.ee IN A 127.0.3.21"``).
``forge(zone, needle, replacement)`` changes a signed record after signing, as an
attacker on the path would: its signature no longer holds and unbound answers SERVFAIL.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional

from .util import free_port, tail

TOOLS = ("unbound", "ldns-keygen", "ldns-signzone")


class ValidatingResolver:
    def __init__(self, signed: Dict[str, List[str]], unsigned: Optional[Dict[str, List[str]]] = None):
        missing = [t for t in TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not found: install the Debian packages unbound and "
                               "ldnsutils (bash scripts/setup.sh does it)")
        self.workdir = tempfile.mkdtemp(prefix="mta-unbound-")
        self.port = free_port(udp=True)
        self.anchors: List[str] = []
        self.zones: Dict[str, str] = {}
        for zone, records in signed.items():
            self.zones[zone] = self._sign(zone, records)
        for zone, records in (unsigned or {}).items():
            self.zones[zone] = self._zonefile(zone, records)
        self._proc: Optional[subprocess.Popen] = None

    def _zonefile(self, zone: str, records: List[str]) -> str:
        path = os.path.join(self.workdir, f"{zone}.zone")
        head = [f"$ORIGIN {zone}.", "$TTL 60", f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
                f"@ IN NS ns.{zone}.", "ns IN A 127.0.0.1"]
        with open(path, "w") as fh:
            fh.write("\n".join(head + list(records)) + "\n")
        return path

    def _sign(self, zone: str, records: List[str]) -> str:
        path = self._zonefile(zone, records)
        run = lambda *cmd: subprocess.run(cmd, cwd=self.workdir, check=True, capture_output=True,  # noqa: E731
                                          text=True).stdout.strip()
        ksk = run("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone)
        zsk = run("ldns-keygen", "-a", "ECDSAP256SHA256", zone)
        run("ldns-signzone", "-n", path, ksk, zsk)
        self.anchors.append(os.path.join(self.workdir, ksk + ".key"))
        return path + ".signed"

    def forge(self, zone: str, needle: str, replacement: str) -> None:
        """Change the signed zone's text after signing (before `start`)."""
        with open(self.zones[zone]) as fh:
            text = fh.read()
        assert needle in text, needle
        with open(self.zones[zone], "w") as fh:
            fh.write(text.replace(needle, replacement))

    def _conf(self) -> str:
        lines = ["server:", "  interface: 127.0.0.1", f"  port: {self.port}", "  do-daemonize: no",
                 '  username: ""', '  chroot: ""', f'  directory: "{self.workdir}"', '  pidfile: ""',
                 "  use-syslog: no", f'  logfile: "{self.workdir}/unbound.log"', "  do-ip6: no",
                 '  module-config: "validator iterator"',
                 '  local-zone: "test." nodefault']  # unbound answers .test itself unless told not to
        lines += [f'  trust-anchor-file: "{anchor}"' for anchor in self.anchors]
        for zone, path in self.zones.items():
            lines += ["auth-zone:", f'  name: "{zone}"', f'  zonefile: "{path}"', "  for-upstream: yes",
                      "  for-downstream: no"]
        path = os.path.join(self.workdir, "unbound.conf")
        with open(path, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 15.0) -> "ValidatingResolver":
        conf = self._conf()
        binary = shutil.which("unbound") or "/usr/sbin/unbound"
        self._proc = subprocess.Popen([binary, "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"unbound did not start:\n{tail(os.path.join(self.workdir, 'unbound.log'))}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        import dns.message
        import dns.query
        zone = next(iter(self.zones))
        try:
            dns.query.udp(dns.message.make_query(f"ns.{zone}.", "A"), "127.0.0.1", port=self.port, timeout=0.5)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
            self._proc = None
        if os.environ.get("MTA_TEST_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)
