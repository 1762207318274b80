"""A private Prometheus server (the Debian `prometheus` binary) scraping given targets.

    with PrometheusServer(["127.0.0.1:9108"], basedir) as prom:
        prom.wait_up()
        prom.query('sum(mta_delivered_total)')   # -> the API's `data.result` list

It listens on a free loopback port, keeps its TSDB under ``basedir`` and scrapes every
second; ``stop()`` ends it by its PID.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterable, List, Optional

from .util import free_port, tail

BINARY = "/usr/bin/prometheus"

_LIVE: "set[PrometheusServer]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server.stop()


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    def __init__(self, targets: Iterable[str], basedir: str, scrape_interval: str = "1s"):
        self.targets = list(targets)
        self.basedir = basedir
        self.scrape_interval = scrape_interval
        self.port: Optional[int] = None
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(basedir, "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "PrometheusServer":
        if not os.path.exists(BINARY):
            raise PrometheusError(f"{BINARY} is missing: run `bash scripts/setup.sh` (apt-get install prometheus)")
        os.makedirs(os.path.join(self.basedir, "data"), exist_ok=True)
        config = os.path.join(self.basedir, "prometheus.yml")
        with open(config, "w") as fh:
            json.dump({  # JSON is YAML
                "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
                "scrape_configs": [{"job_name": "mta", "static_configs": [{"targets": self.targets}]}],
            }, fh)
        self.port = free_port()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [BINARY, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(self.basedir, 'data')}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready within {timeout}s:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                doc = json.load(response)
        except urllib.error.HTTPError as exc:  # a bad query: the body says why
            doc = json.load(exc)
        if doc.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str) -> List[dict]:
        """An instant query at the current time: the `result` list (vector or scalar)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str) -> Optional[float]:
        """The single value of a query that yields one series (None when it yields none)."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise PrometheusError(f"{expr!r} yields {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_up(self, timeout: float = 30.0) -> None:
        """Until every target has been scraped successfully."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query("up")
            if len(result) == len(self.targets) and all(r["value"][1] == "1" for r in result):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(f"targets not up within {timeout}s: {result}\n{tail(self.log_path)}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        _LIVE.discard(self)

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(os.path.join(self.basedir, "data"), ignore_errors=True)
