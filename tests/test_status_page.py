"""The status page in a real browser: Debian's chromium, headless, loads the page of a running
bridge; the test reads what a person would see.  A phone-sized screenshot is kept in
``run/screenshots/status-page.png`` (ignored by git) for a developer to look at."""

from __future__ import annotations

import shutil
import struct
from html.parser import HTMLParser

from tests.support.bridgeproc import ROOT
from tests.support.browser import dump_dom, screenshot
from tests.support.clients import rr

SCREENSHOTS = ROOT / "run" / "screenshots"


class Cells(HTMLParser):
    """Table rows as lists of cell texts, and the text of the element with id="state"."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self.state = ""
        self._in_state = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        self._in_state = self._in_state or ("id", "state") in attrs

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "span":
            self._in_state = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_state:
            self.state += data


def row_of(rows: list[list[str]], first: str) -> list[str]:
    return next(r for r in rows if r and r[0] == first)


def test_status_page_shows_routes_counts_and_last_errors_in_a_browser(make_bridge, broker, topic_prefix, tmp_path):
    t = topic_prefix
    bridge = make_bridge([
        {"topic": f"{t}/inspect/+", "handler": "inspect_event"},
        {"topic": f"{t}/boom", "handler": "boom"},
        {"topic": f"{t}/faas", "handler": "faas_inspect"},
        {"topic": f"{t}/async", "handler": "slow_async"},
    ])
    for i in range(3):
        rr(broker.port, f"{t}/inspect/{i}", "x")
    rr(broker.port, f"{t}/boom", "abc")
    rr(broker.port, f"{t}/boom", "abcd")

    page = Cells()
    page.feed(dump_dom(bridge.http_url + "/"))
    assert page.state == "serving"
    headers = row_of(page.rows, "Topic")
    inspect = dict(zip(headers, row_of(page.rows, f"{t}/inspect/+")))
    assert (inspect["Function"], inspect["Style"], inspect["Mode"]) == ("inspect_event", "IoT Studio", "sync")
    assert (inspect["Requests"], inspect["Errors"], inspect["Timeouts"], inspect["Last 5 min"]) == ("3", "0", "0", "3")
    assert inspect["p50"].endswith("ms") and inspect["p99"].endswith("ms")
    boom = dict(zip(headers, row_of(page.rows, f"{t}/boom")))
    assert (boom["Requests"], boom["Errors"]) == ("2", "2")
    assert dict(zip(headers, row_of(page.rows, f"{t}/faas")))["Style"] == "OpenFaaS"
    assert dict(zip(headers, row_of(page.rows, f"{t}/async")))["Mode"] == "async"
    error = dict(zip(row_of(page.rows, "Function"), row_of(page.rows, "boom")))
    assert (error["Type"], error["Message"], error["Where"]) == ("ValueError", "cannot use 4 bytes", "boom.py:3")
    assert "ago" in error["When"]
    assert row_of(page.rows, "requests")[1] == "connected" and row_of(page.rows, "replies")[1] == "connected"

    shot = screenshot(bridge.http_url + "/", tmp_path / "status-page.png")
    width, height = struct.unpack(">II", shot.read_bytes()[16:24])  # the PNG's IHDR
    assert (width, height) == (412, 915)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOTS / "status-page.png")
    print(f"screenshot: {SCREENSHOTS / 'status-page.png'}")
