"""The operator's console (SPEC §9) in a real browser: a live MTA with a delivered, a bounced
and a paused message, every page loaded by headless Chromium, and what each shows checked
in the DOM after its script ran (the overview's counters, the paused destination with its
reason, a lookup that finds the delivered message by id and by recipient, the stuck
message); the script runs under the page's Content-Security-Policy without a violation.
Then the pauses page's own form, with its CSRF token, resumes the destination and the
held message is delivered.

Each page is also photographed (1280x800); MTA_CONSOLE_SCREENSHOTS=DIR keeps the PNGs
there (the README's are made with DIR=docs/console)."""

import os
import re
import shutil
import urllib.parse
import urllib.request
from html.parser import HTMLParser

import pytest

from tests.testbed import browser
from tests.testbed.amqp import ResultCollector, make_message, publish
from tests.testbed.checks import run_id
from tests.testbed.util import free_port, wait_for
from tests.integration.test_tracking import mta


class Tables(HTMLParser):
    """Every table of a page: {id or position: [[cell text, ...], ...]}, and the forms' hidden inputs."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.hidden: list[dict] = []
        self._table = self._row = self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id") or str(len(self.tables)), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "input" and attrs.get("type") == "hidden":
            self.hidden.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def load(base: str, path: str, profile: str, shots: str, name: str) -> Tables:
    url = base + path
    html, said = browser.dom(url, profile)
    assert not [line for line in said if "Content Security Policy" in line or "Uncaught" in line], said
    shot = os.path.join(shots, f"{name}.png")
    browser.screenshot(url, shot, profile)
    with open(shot, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    page = Tables(html)
    page.html = html
    return page


@pytest.mark.timeout(300)
def test_console_pages_in_chromium(vhost, sinks, mta_config, start_mta, tmp_path):
    assert browser.available(), "chromium is not installed (scripts/setup.sh installs it)"
    port = free_port()
    config = mta_config(default={"retry_intervals": ["1s"], "max_age": "10m"}, metrics={"port": port},
                        tracking={"stuck_after": "2s"}, console={"allow_pause": True})
    node = start_mta(config)
    run = run_id()
    assert mta("pause", "ok2.test", "--config", config).returncode == 0
    wait_for(lambda: "pause ok2.test" in node.log_text(), 10, what="the pause")
    delivered, bounced, paused = f"ok-{run}", f"hard-{run}", f"paused-{run}"
    messages = {delivered: f"user-{run}@ok1.test", bounced: f"hard-{run}@ok1.test", paused: f"user-{run}@ok2.test"}
    publish(vhost, "single", [make_message(i, r, tags=["shop"]) for i, r in messages.items()])
    results = ResultCollector(vhost)
    results.collect([delivered, bounced], timeout=60)
    wait_for(lambda: paused in mta("stuck", "-c", config).stdout, 20, what="the paused message stuck")

    base, profile = f"http://127.0.0.1:{port}", str(tmp_path / "chromium")
    shots = os.environ.get("MTA_CONSOLE_SCREENSHOTS") or str(tmp_path / "shots")
    os.makedirs(shots, exist_ok=True)

    overview = load(base, "/console", profile, shots, "overview")
    last = {row[0]: row[1:] for row in overview.tables["last-minute"]}
    head = last[""]
    counts = dict(zip(head, (int(x or 0) for x in last["all lanes"])))
    assert counts["processed"] >= 3 and counts["delivered"] >= 1 and counts["bounced"] >= 1, counts
    assert counts["not tried"] >= 1 and counts["attempts"] >= 2, counts

    table = load(base, "/console/destinations", profile, shots, "destinations")
    rows = {row[0]: row for row in table.tables["destinations"][1:]}
    assert rows["ok2.test"][1:3] == ["paused", "paused by operator (mta pause)"], rows
    assert 'title="sort by destination"' in table.html  # the script ran under the CSP

    detail = load(base, "/console/destination?key=ok2.test", profile, shots, "destination")
    facts = {row[0]: row[1] for row in detail.tables["detail"]}
    assert facts["state"] == "paused" and facts["reason"] == "paused by operator (mta pause)", facts
    assert facts["until"] == "until resumed"

    found = load(base, f"/console/message?q={delivered}", profile, shots, "message")
    (events,) = found.tables.values()
    assert [row[1] for row in events[1:]] == ["accepted", "delivered"], events
    assert re.match(r"\S+ \[127\.\d+\.\d+\.\d+\]$", events[2][4]) and events[2][5].startswith("250"), events
    assert f"user-{run}@ok1.test" in found.html
    by_recipient = Tables(browser.dom(f"{base}/console/message?q=" + urllib.parse.quote(f"hard-{run}@OK1.test"),
                                      profile)[0])
    assert [row[1] for row in by_recipient.tables["0"][1:]] == ["accepted", "bounced"]

    # The paused message comes back every 15 s and is held again, an event: for stuck_after
    # (2 s) after each hold it is not silent, and the page rightly leaves it out. So the
    # page is loaded again until it lists it, as an operator would refresh it.
    stuck = wait_for(lambda: (page := load(base, "/console/stuck", profile, shots, "stuck")).tables.get("stuck")
                     and page, 40, interval=0.5, what="the paused message on the stuck page")
    assert [row[0] for row in stuck.tables["stuck"][1:]] == [paused]

    pauses = load(base, "/console/pauses", profile, shots, "pauses")
    assert [row[:2] for row in pauses.tables["pauses"][1:]] == [["ok2.test", "paused by operator (mta pause)"]]
    resume = next(h for h in pauses.hidden if h["name"] == "target" and h["value"] == "ok2.test")
    csrf = next(h["value"] for h in pauses.hidden if h["name"] == "csrf")
    assert resume
    form = urllib.parse.urlencode({"csrf": csrf, "target": "ok2.test"}).encode()
    with urllib.request.urlopen(f"{base}/console/resume", form, timeout=30) as response:
        assert "resume ok2.test: acknowledged by 1 MTA(s) of 1" in response.read().decode()
    results.collect([paused], timeout=60)
    assert results.finals(paused)[-1]["status"] == "delivered"
    shutil.rmtree(profile, ignore_errors=True)
