"""A private RabbitMQ node for tests (see /work/shared/TESTBED.md).

The node gets its own name, ports, directories, cookie and epmd (on a private port, on
127.0.0.1 only), so it never collides with a system RabbitMQ and never listens outside
loopback.  Debian's ``/usr/sbin/rabbitmq-server`` and ``rabbitmqctl`` wrappers switch to the
``rabbitmq`` user with ``su`` (HOME becomes /var/lib/rabbitmq); the environment variables
below survive ``su``.  The Erlang cookie is passed explicitly (``-setcookie`` for the node,
``--erlang-cookie`` for the CLI) so nothing depends on a cookie file in anybody's HOME.

Usage::

    node = RabbitNode("/tmp/mta-rabbit-xyz")        # port 5680, dist 25680, mtatest@localhost
    node.start()
    url = node.add_vhost("t1")                       # amqp://guest:guest@127.0.0.1:5680/t1
    node.queue_depth(url, "mta.bulk")
    node.kill9(); node.start()                       # crash + recover, same data dir
    node.restart()                                   # clean stop + start, same data dir
    node.stop()                                      # node and its private epmd
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from typing import Iterable, Optional
from urllib.parse import quote, unquote, urlparse

from .util import port_is_free, tail

DEFAULT_PORT = 5680
DEFAULT_DIST_PORT = 25680
DEFAULT_NODENAME = "mtatest@localhost"


class RabbitError(RuntimeError):
    pass


def _find(binary: str) -> Optional[str]:
    path = shutil.which(binary)
    if path:
        return path
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin", "/usr/lib/rabbitmq/bin"):
        cand = os.path.join(d, binary)
        if os.access(cand, os.X_OK):
            return cand
    return None


def _find_epmd() -> Optional[str]:
    path = _find("epmd")
    if path:
        return path
    import glob
    cands = sorted(glob.glob("/usr/lib/erlang/erts-*/bin/epmd"))
    return cands[-1] if cands else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _erl_safe(name: str) -> str:
    """``name`` for an Erlang binary literal; refuses what would need escaping."""
    if not name or any(c in name for c in '"\\'):
        raise ValueError(f"vhost name {name!r} cannot go into an Erlang expression")
    return name


def vhost_of(url_or_name: str) -> str:
    """The vhost name of an AMQP URL (or the argument itself when it is not a URL)."""
    if "://" not in url_or_name:
        return url_or_name
    path = urlparse(url_or_name).path
    if not path or path == "/":
        return "/"
    return unquote(path[1:])


class RabbitNode:
    def __init__(self, basedir: str, port: Optional[int] = None, dist_port: Optional[int] = None,
                 nodename: str = DEFAULT_NODENAME, *, epmd_port: Optional[int] = None,
                 consumer_timeout_ms: Optional[int] = None, extra_conf: Optional[dict] = None,
                 boot_timeout: float = 120.0):
        if port is None:
            port = int(os.environ.get("MTA_TEST_AMQP_PORT", DEFAULT_PORT))
        if dist_port is None:
            env_dist = os.environ.get("MTA_TEST_DIST_PORT")
            dist_port = int(env_dist) if env_dist else (
                DEFAULT_DIST_PORT if port == DEFAULT_PORT else port + 20000)
        if epmd_port is None:
            env_epmd = os.environ.get("MTA_TEST_EPMD_PORT")
            epmd_port = int(env_epmd) if env_epmd else dist_port + 1000
        self.basedir = os.path.abspath(basedir)
        self.port = port
        self.dist_port = dist_port
        self.epmd_port = epmd_port
        self.nodename = nodename
        self.ctl_ports = (dist_port + 3000, dist_port + 3020)
        self.consumer_timeout_ms = consumer_timeout_ms
        self.extra_conf = dict(extra_conf or {})
        self.boot_timeout = boot_timeout
        self.cookie = "MTATEST" + secrets.token_hex(16).upper()
        self.server_bin = _find("rabbitmq-server")
        self.ctl_bin = _find("rabbitmqctl")
        if not self.server_bin or not self.ctl_bin:
            raise RabbitError(
                "rabbitmq-server/rabbitmqctl not found: install the Debian package "
                "rabbitmq-server (bash scripts/setup.sh does it)")
        self.mnesia_dir = os.path.join(self.basedir, "mnesia")
        self.log_dir = os.path.join(self.basedir, "log")
        self.conf_base = os.path.join(self.basedir, "rabbitmq")      # + ".conf"
        self.plugins_file = os.path.join(self.basedir, "enabled_plugins")
        self.env_file = os.path.join(self.basedir, "rabbitmq-env.conf")
        self.pid_file = os.path.join(self.basedir, "rabbit.pid")
        self.stdout_file = os.path.join(self.basedir, "server.out")
        self._proc: Optional[subprocess.Popen] = None
        self._epmd: Optional[subprocess.Popen] = None
        self._atexit = False

    # ------------------------------------------------------------------ setup
    @property
    def host_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def url(self, vhost: str = "/") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": self.mnesia_dir,
            "RABBITMQ_LOG_BASE": self.log_dir,
            "RABBITMQ_CONFIG_FILE": self.conf_base,
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.basedir, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": self.plugins_file,
            "RABBITMQ_CONF_ENV_FILE": self.env_file,
            "RABBITMQ_PID_FILE": self.pid_file,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                f"-setcookie {self.cookie} -kernel inet_dist_use_interface {{127,0,0,1}}",
            "ERL_CRASH_DUMP": os.path.join(self.log_dir, "erl_crash.dump"),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            # Each rabbitmqctl run listens on a distribution port of this range while it
            # runs; the default range (35672-35682) is shared by every node on the host,
            # which parallel test sessions could use up.
            "RABBITMQ_CTL_DIST_PORT_MIN": str(self.ctl_ports[0]),
            "RABBITMQ_CTL_DIST_PORT_MAX": str(self.ctl_ports[1]),
        })
        env.pop("RABBITMQ_ERLANG_COOKIE", None)
        return env

    def _write_files(self) -> None:
        os.makedirs(self.mnesia_dir, exist_ok=True)
        os.makedirs(self.log_dir, exist_ok=True)
        conf = {
            "loopback_users.guest": "true",
            "listeners.tcp.default": f"127.0.0.1:{self.port}",
            "log.file.level": "info",
            "log.console": "false",
            "collect_statistics_interval": "500",
        }
        if self.consumer_timeout_ms is not None:
            conf["consumer_timeout"] = str(int(self.consumer_timeout_ms))
        conf.update({k: str(v) for k, v in self.extra_conf.items()})
        with open(self.conf_base + ".conf", "w") as fh:
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        # Queue statistics (rabbitmqctl list_queues) refresh every 5 s by default; tests
        # poll queue depths, so refresh them twice a second. A channel checks its
        # consumers' acknowledgement timeout (consumer_timeout) on its tick, once a minute
        # by default: tick every second, so that a test of that timeout sees the broker
        # enforce it about when it is due rather than up to a minute later.
        with open(os.path.join(self.basedir, "advanced.config"), "w") as fh:
            fh.write("[{rabbit, [{quorum_tick_interval, 500},\n"
                     "            {channel_tick_interval, 1000}]}].\n")
        with open(self.plugins_file, "w") as fh:
            fh.write("[].\n")
        with open(self.env_file, "w") as fh:
            fh.write("# private test node: nothing from /etc/rabbitmq/rabbitmq-env.conf\n")
        # The trap: every directory must belong to the rabbitmq user (and be reachable).
        os.chmod(self.basedir, 0o755)
        try:
            pw = pwd.getpwnam("rabbitmq")
        except KeyError as exc:
            raise RabbitError("user 'rabbitmq' missing: is the rabbitmq-server package installed?") from exc
        if os.geteuid() == 0:
            for root, dirs, files in os.walk(self.basedir):
                os.chown(root, pw.pw_uid, pw.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        parent = os.path.dirname(self.basedir)
        while parent and parent != "/":
            if not os.stat(parent).st_mode & 0o001:
                raise RabbitError(f"{parent} is not traversable by the rabbitmq user; "
                                  f"put the node directory elsewhere (e.g. under /tmp)")
            parent = os.path.dirname(parent)

    # ------------------------------------------------------------------ epmd
    def _ensure_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            return
        if not port_is_free(self.epmd_port):
            # An epmd from an earlier, crashed session may still hold the port; it works
            # just as well (it is loopback-only and private to this port).
            return
        epmd = _find_epmd()
        if not epmd:
            raise RabbitError("epmd not found (erlang-base missing?)")
        self._epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env=self.env())
        deadline = time.monotonic() + 10
        while port_is_free(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise RabbitError(f"private epmd on port {self.epmd_port} did not start")
            time.sleep(0.05)

    def _stop_epmd(self) -> None:
        if self._epmd is not None and self._epmd.poll() is None:
            self._epmd.terminate()
            try:
                self._epmd.wait(5)
            except subprocess.TimeoutExpired:
                self._epmd.kill()
                self._epmd.wait(5)
        self._epmd = None

    # ------------------------------------------------------------------ ctl
    def ctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.ctl_bin, "-n", self.nodename, "--erlang-cookie", self.cookie, *args]
        try:
            cp = subprocess.run(cmd, env=self.env(), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RabbitError(f"rabbitmqctl {' '.join(args)} timed out after {timeout}s") from exc
        if check and cp.returncode != 0:
            raise RabbitError(f"rabbitmqctl {' '.join(args)} failed ({cp.returncode}): "
                              f"{cp.stdout.strip()} {cp.stderr.strip()}")
        return cp

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def beam_pid(self) -> Optional[int]:
        try:
            with open(self.pid_file) as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def log_tail(self, nbytes: int = 4000) -> str:
        node_log = os.path.join(self.log_dir, f"{self.nodename}.log")
        return (f"--- {self.stdout_file}\n{tail(self.stdout_file, nbytes)}\n"
                f"--- {node_log}\n{tail(node_log, nbytes)}")

    def start(self) -> "RabbitNode":
        if self.running:
            return self
        if not port_is_free(self.port):
            raise RabbitError(f"AMQP port {self.port} is busy (another test node? set "
                              f"MTA_TEST_AMQP_PORT to use another port)")
        self._write_files()
        self._ensure_epmd()
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass
        out = open(self.stdout_file, "ab")
        try:
            self._proc = subprocess.Popen(
                [self.server_bin], env=self.env(), cwd=self.basedir,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)       # == setsid rabbitmq-server
        finally:
            out.close()
        if not self._atexit:
            atexit.register(self._atexit_cleanup)
            self._atexit = True
        deadline = time.monotonic() + self.boot_timeout
        last = ""
        while True:
            if self._proc.poll() is not None:
                raise RabbitError(f"rabbitmq-server exited with {self._proc.returncode} during "
                                  f"boot\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill_all()
                raise RabbitError(f"rabbitmq node {self.nodename} did not boot within "
                                  f"{self.boot_timeout}s ({last})\n{self.log_tail()}")
            step = max(1, int(min(10, remaining)))
            cp = self.ctl("await_startup", "--timeout", str(step),
                          timeout=step + 30, check=False)
            if cp.returncode == 0:
                break
            last = (cp.stdout + cp.stderr).strip()[-500:]
            time.sleep(0.5)
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the node cleanly (kill it if it does not stop) and its private epmd."""
        self._stop_node(timeout)
        self._stop_epmd()

    def _stop_node(self, timeout: float = 60.0) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            try:
                self.ctl("stop", self.pid_file, timeout=timeout, check=False)
            except RabbitError:
                pass
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._kill_all()
        self._proc = None

    def kill9(self) -> None:
        """Kill the Erlang VM hard (SIGKILL), as a crash would; the data dir stays."""
        if self._proc is None:
            return
        pid = self.beam_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 15
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._kill_all()

    def restart(self, timeout: float = 60.0) -> "RabbitNode":
        """Clean stop then start on the same data directory (epmd keeps running)."""
        self._stop_node(timeout)
        return self.start()

    def _kill_all(self) -> None:
        """SIGKILL every process of the node's session (wrappers, beam, helpers)."""
        pid = self.beam_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None

    def _atexit_cleanup(self) -> None:
        try:
            if self.running:
                self._kill_all()
        finally:
            self._stop_epmd()

    # ------------------------------------------------------------------ admin
    def add_vhost(self, name: str) -> str:
        """Create a vhost with full permissions for guest; returns its AMQP URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def delete_vhost(self, name_or_url: str) -> None:
        self.ctl("delete_vhost", vhost_of(name_or_url), check=False)

    def replace_vhosts(self, name: str, retire: Iterable[str] = ()) -> str:
        """Delete the vhosts ``retire`` (names or URLs; those already gone are ignored),
        then create ``name`` with full permissions for guest; returns its AMQP URL.

        One rabbitmqctl run instead of one per step: each run starts an Erlang VM, about
        a second of CPU, which tests pay before and after every scenario otherwise. Falls
        back to the separate commands if the broker's functions differ from 3.10's."""
        retired = ", ".join(f"<<\"{_erl_safe(vhost_of(v))}\">>" for v in retire)
        vhost = f"<<\"{_erl_safe(name)}\">>"
        cp = self.ctl("eval",
                      f"[catch rabbit_vhost:delete(V, <<\"guest\">>) || V <- [{retired}]], "
                      f"{{rabbit_vhost:add({vhost}, <<\"guest\">>), "
                      f"rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, {vhost}, "
                      f"<<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"guest\">>)}}.",
                      check=False)
        if cp.returncode != 0 or cp.stdout.strip() != "{ok,ok}":
            for v in retire:
                self.delete_vhost(v)
            self.ctl("add_vhost", name, check=False)      # may exist from the eval
            self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def queues(self, vhost: str) -> dict:
        """{queue name: messages (ready + unacknowledged)} of a vhost (name or URL)."""
        cp = self.ctl("list_queues", "-p", vhost_of(vhost), "--quiet", "--no-table-headers",
                      "name", "messages")
        out = {}
        for line in cp.stdout.splitlines():
            parts = line.rsplit("\t", 1)
            if len(parts) == 2 and parts[1].strip().isdigit():
                out[parts[0]] = int(parts[1])
        return out

    def queue_depth(self, vhost: str, queue: str) -> Optional[int]:
        """Messages (ready + unacknowledged) in ``queue``; None when it does not exist.

        These are the broker's statistics: they lag up to about a second (quorum tick and
        stats interval are set to 0.5 s); poll with ``util.wait_for`` when it matters.
        ``amqp.queue_info`` gives the exact ready count (no unacked) without lag."""
        return self.queues(vhost).get(queue)
