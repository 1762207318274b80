"""A private Postfix instance for side-by-side benchmarks, and the raw smtp-source figure.

Debian's `postfix` package, run from its own config_directory, queue_directory and
data_directory under the benchmark's work directory (`postfix -c DIR start`), never the
system service. It listens on 127.0.0.1:<port>, relays everything from loopback, and a
transport map sends each benchmark domain straight to its sink, as the MTA does through
DNS. No chroot, no local delivery, its log in a file of its own.

Measured like the MTA: the queue is filled first with delivery held back
(`defer_transports = smtp`), then delivery is released and timed until the queue is empty;
the rate also comes from the first and last `status=sent` in Postfix's own log.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from datetime import datetime

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
tlsmgr    unix  - - n 1000? 1 tlsmgr
postlog   unix-dgram n - n - 1 postlogd
"""

# Postfix's log timestamps: "Nov 29 23:01:02.123456" (postlogd writes microseconds)
_STAMP = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d(?:\.\d+)?) ")


class PrivatePostfix:
    def __init__(self, root: str, port: int, routes: dict[str, str], concurrency: int):
        self.root = root
        self.port = port
        self.etc = os.path.join(root, "etc")
        self.queue = os.path.join(root, "queue")
        self.data = os.path.join(root, "data")
        self.maillog = os.path.join(root, "maillog")
        self.routes = routes  # domain -> "host:port"
        self.concurrency = concurrency
        self.running = False

    def _main_cf(self) -> str:
        return "\n".join([
            "compatibility_level = 3.6",
            f"queue_directory = {self.queue}",
            f"data_directory = {self.data}",
            "command_directory = /usr/sbin",
            "daemon_directory = /usr/lib/postfix/sbin",
            "meta_directory = /etc/postfix",
            "shlib_directory = /usr/lib/postfix",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = postfix.bench.test",
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            "local_transport = error:local delivery is disabled",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            f"transport_maps = texthash:{self.etc}/transport",
            "smtp_dns_support_level = disabled",
            f"default_destination_concurrency_limit = {self.concurrency}",
            "smtp_tls_security_level = none",
            "smtpd_tls_security_level = none",
            "biff = no",
            f"maillog_file = {self.maillog}",
            f"maillog_file_prefixes = {os.path.dirname(self.root)}",
            "defer_transports = smtp",  # filling: queued, not delivered
            "",
        ])

    def start(self) -> None:
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(self.data, exist_ok=True)
        os.makedirs(self.queue, exist_ok=True)
        with open(os.path.join(self.etc, "main.cf"), "w") as fh:
            fh.write(self._main_cf())
        with open(os.path.join(self.etc, "master.cf"), "w") as fh:
            fh.write(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        with open(os.path.join(self.etc, "transport"), "w") as fh:
            for domain, target in self.routes.items():
                fh.write(f"{domain} smtp:[{target.rsplit(':', 1)[0]}]:{target.rsplit(':', 1)[1]}\n")
        shutil.chown(self.data, "postfix")
        self._postfix("start")
        self.running = True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import socket
                with socket.create_connection(("127.0.0.1", self.port), 1):
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"private Postfix did not listen on 127.0.0.1:{self.port}; see {self.maillog}")

    def _postfix(self, *args: str) -> None:
        subprocess.run([POSTFIX, "-c", self.etc, *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.running:
            subprocess.run([POSTFIX, "-c", self.etc, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running = False

    def queued(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def release(self) -> None:
        """Let the deferred queue go: deliver everything now."""
        subprocess.run([POSTCONF, "-c", self.etc, "-e", "defer_transports ="], check=True)
        self._postfix("reload")
        subprocess.run([POSTQUEUE, "-c", self.etc, "-f"], check=True)

    def sent_times(self) -> list[float]:
        year = datetime.now().year
        times = []
        with open(self.maillog, errors="replace") as fh:
            for line in fh:
                if "status=sent" not in line:
                    continue
                m = _STAMP.match(line)
                if m:
                    stamp = m.group(1)
                    fmt = "%Y %b %d %H:%M:%S.%f" if "." in stamp else "%Y %b %d %H:%M:%S"
                    times.append(datetime.strptime(f"{year} {stamp}", fmt).timestamp())
        return times

    def cpu_seconds(self) -> float:
        """CPU of the instance's live processes (master, qmgr, smtpd, smtp, cleanup...)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
                if not exe.startswith("/usr/lib/postfix/sbin/"):
                    continue
                with open(f"/proc/{pid}/environ", "rb") as fh:
                    if f"MAIL_CONFIG={self.etc}".encode() not in fh.read():
                        continue
                with open(f"/proc/{pid}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
        return total


async def inject(port: int, messages: list[tuple[str, str, bytes]], sessions: int = 20) -> None:
    """Submit (sender, recipient, CRLF data) over `sessions` SMTP connections to 127.0.0.1:port."""
    import aiosmtplib

    queue = list(reversed(messages))

    async def one() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False, timeout=120)
        await client.connect()
        try:
            while queue:
                sender, recipient, data = queue.pop()
                await client.sendmail(sender, [recipient], data)
        finally:
            await client.quit()

    await asyncio.gather(*(one() for _ in range(sessions)))


def smtp_source(target: str, messages: int, size: int, sessions: int = 20) -> float:
    """msg/s of Postfix's smtp-source alone against one sink: the ceiling of the sink side."""
    t = time.monotonic()
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-d",
                    "-f", "bench@sender.test", "-t", "user@d0.test", target],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return messages / (time.monotonic() - t)
