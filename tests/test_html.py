"""`mcountrw audit --format html`: one self-contained file that headless Chromium renders, with
the site table filled in by its script and the charts drawn; checked in the DOM after the script
ran and in the pixels of a screenshot."""

from __future__ import annotations

import json
import os
import re
import select
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from boot import require_tool
from conftest import FIXTURES, HOSTILE_FUNCTIONS, hostile_object
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.report.html import STATE_COLOURS, VERDICT_COLOURS

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip


def _report(tmp_path: Path, *paths: Path) -> Path:
    out = tmp_path / "audit.html"
    result = CliRunner().invoke(
        app, ["audit", *map(str, paths), "--format", "html", "-o", str(out), "--fail-on", "never"]
    )
    assert result.exit_code == 0, result.output
    return out


def _chromium_command(tmp_path: Path, *args: str) -> list[str]:
    """Headless Chromium with a profile of its own (a fresh directory per browser started)."""
    exe = require_tool("chromium")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    return [str(exe), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]


def _chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [*_chromium_command(tmp_path, *args), page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


class Page:
    """A page open in headless Chromium, driven over the DevTools protocol on the pipe of
    ``--remote-debugging-pipe`` (fd 3 carries commands in, fd 4 replies out, each message JSON
    ended by a NUL): the filter is typed and the buttons clicked as a user would, through the
    browser's own input events, not by calling the page's functions."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self._out, self._in = to_browser, from_browser
        self._pending = b""
        self._id = 0
        self._session: str | None = None

    def call(self, method: str, **params: Any) -> dict:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session is not None:
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:  # events arrive between replies: skip them
            reply = json.loads(self._next())
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]

    def _next(self) -> bytes:
        while b"\0" not in self._pending:
            ready, _, _ = select.select([self._in], [], [], 60)
            assert ready, "Chromium did not answer in 60 s"
            chunk = os.read(self._in, 1 << 20)
            assert chunk, "Chromium closed its DevTools pipe"
            self._pending += chunk
        message, self._pending = self._pending.split(b"\0", 1)
        return message

    def attach(self, url: str) -> None:
        targets = self.call("Target.getTargets")["targetInfos"]
        target = next(t["targetId"] for t in targets if t["type"] == "page" and t["url"] == url)
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_rendered(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while self.eval("document.body && document.body.getAttribute('data-rendered')") != "yes":
            assert time.monotonic() < end, "the table script did not finish"
            time.sleep(0.1)

    def click(self, selector: str, index: int = 0) -> None:
        """A left click in the middle of the element (scrolled into view first), as the mouse
        gives it: one that misses, or lands on something covering the element, clicks nothing."""
        box = self.eval(
            f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}];"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_filter(self, text: str) -> None:
        """Replace the filter's text: click into it, select what is there, type over it."""
        self.click("#filter")
        self.eval("document.getElementById('filter').select()")
        if text:
            self.call("Input.insertText", text=text)
        else:
            for kind in ("keyDown", "keyUp"):
                self.call(
                    "Input.dispatchKeyEvent", type=kind, key="Backspace", code="Backspace", windowsVirtualKeyCode=8
                )

    def info(self) -> str:
        return str(self.eval("document.getElementById('page-info').textContent"))

    def rows(self) -> list[list[str]]:
        return list(
            self.eval(
                "Array.from(document.querySelectorAll('#sites tbody tr'))"
                ".map(tr => Array.from(tr.children).map(td => td.textContent))"
            )
        )


@contextmanager
def _browser(tmp_path: Path, page: Path) -> Iterator[Page]:
    cmd = _chromium_command(tmp_path, "--remote-debugging-pipe", "--window-size=1200,900")
    commands, browser_in = os.pipe()
    browser_out, replies = os.pipe()

    def pipes_at_3_and_4() -> None:
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    proc = subprocess.Popen(
        [*cmd, page.as_uri()],
        pass_fds=(3, 4),
        preexec_fn=pipes_at_3_and_4,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(commands)
    os.close(replies)
    try:
        driven = Page(browser_in, browser_out)
        driven.attach(page.as_uri())
        yield driven
    finally:
        proc.kill()
        proc.wait()
        os.close(browser_in)
        os.close(browser_out)


def _site_data(page: Path) -> list[list[str]]:
    """The rows the page's script works from, read from the page itself."""
    found = re.search(r'<script type="application/json" id="site-data">(.*?)</script>', page.read_text(), re.S)
    assert found is not None
    return list(json.loads(found.group(1)))


def _matching(rows: list[list[str]], query: str) -> list[list[str]]:
    """What the filter is meant to keep: rows with ``query`` in any cell, case ignored."""
    return [r for r in rows if query.lower() in " ".join(r).lower()]


def _place_key(place: str) -> tuple[str, int]:
    """A place in a relocatable file as a kernel developer orders it: ``.text+0x4`` before
    ``.text+0x2c``."""
    section, offset = place.rsplit("+", 1)
    return section, int(offset, 16)


def _png_rows(path: Path, rows: int) -> tuple[int, list[bytes]]:
    """Width and the first ``rows`` unfiltered RGB(A) rows of an 8-bit PNG (PNG spec 9.2)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, _height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompressobj().decompress(idat, (width * bpp + 1) * rows)
    stride = width * bpp
    prev, out = bytearray(stride), []
    for r in range(rows):
        f, line = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        out.append(bytes(line) if bpp == 3 else bytes(v for k, v in enumerate(line) if k % 4 != 3))
        prev = line
    return width, out


def _count_colour(rows: list[bytes], hex_colour: str) -> int:
    rgb = bytes.fromhex(hex_colour.lstrip("#"))
    return sum(row[i : i + 3] == rgb for row in rows for i in range(0, len(row), 3))


def test_page_is_self_contained(tmp_path: Path) -> None:
    text = _report(tmp_path, FIXTURES / "bin").read_text()
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", text)
    assert "http://www.w3.org/2000/svg" in text  # the SVG namespace is a name, not a fetch
    assert text.count("https://") == 0


def test_chromium_renders_table_and_charts(tmp_path: Path, manifest: dict) -> None:
    page = _report(tmp_path, FIXTURES / "bin")
    dom = _chromium(tmp_path, page, "--dump-dom", "--virtual-time-budget=5000").stdout
    assert 'data-rendered="yes"' in dom  # the table script ran to its end
    body = re.search(r'<table id="sites">.*?<tbody>(.*?)</tbody>', dom, re.S)
    sites = sum(len(b["sites"]) for b in manifest["binaries"].values())
    assert body is not None and body.group(1).count("<tr>") == sites  # every fixture site, one page
    assert "<td>r0live_fn</td>" in body.group(1) and 'class="verdict-live">live</td>' in body.group(1)
    assert len(re.findall(r'<rect class="seg"', dom)) >= 4
    assert f"{sites} sites, page 1 of 1" in dom

    shot = tmp_path / "shot.png"
    _chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1000,900", "--hide-scrollbars")
    _width, rows = _png_rows(shot, 900)
    # the charts: bars in the state and verdict colours; the table: its header background
    assert _count_colour(rows, STATE_COLOURS["enabled"]) > 2000
    assert _count_colour(rows, VERDICT_COLOURS["safe"]) > 2000
    assert _count_colour(rows, "#eeeeff") > 2000


@pytest.mark.corpus
@pytest.mark.slow
def test_chromium_pages_the_vmlinux_table(corpus, tmp_path: Path) -> None:
    page = _report(tmp_path, corpus.vmlinux)
    dom = _chromium(tmp_path, page, "--dump-dom", "--virtual-time-budget=20000").stdout
    assert "33690 sites, page 1 of 169" in dom
    body = re.search(r'<table id="sites">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body is not None and body.group(1).count("<tr>") == 200


def test_chromium_filter_sort_and_pages_take_real_input(tmp_path: Path) -> None:
    """The controls, used through the browser's input events: the filter keeps what matches,
    a header click sorts hex places by value (a text sort put .text+0x2c before .text+0x4), a
    second click reverses it, and a new filter keeps the order chosen."""
    page = _report(tmp_path, FIXTURES / "bin")
    data = _site_data(page)
    with _browser(tmp_path, page) as view:
        view.wait_rendered(30)
        assert view.info() == f"{len(data)} sites, page 1 of 1"
        assert view.rows() == data

        view.type_filter("CLEAN.O")  # case does not matter
        kept = _matching(data, "clean.o")
        assert len(kept) == 3 and {r[0] for r in kept} == {"clean.o"}
        assert view.info() == "3 sites, page 1 of 1" and view.rows() == kept

        view.click("#sites th", 1)  # "place"
        assert [r[1] for r in view.rows()] == [".text+0x4", ".text+0x2c", ".text+0x5c"]
        view.click("#sites th", 1)
        assert [r[1] for r in view.rows()] == [".text+0x5c", ".text+0x2c", ".text+0x4"]

        view.type_filter("anom-r0live.o")  # the place column still sorted, high to low
        kept = _matching(data, "anom-r0live.o")
        want = sorted(kept, key=lambda r: _place_key(r[1]), reverse=True)
        assert len(kept) == 3 and want != kept
        assert view.info() == "3 sites, page 1 of 1" and view.rows() == want

        view.type_filter("")
        assert view.info() == f"{len(data)} sites, page 1 of 1"
        assert sorted(map(tuple, view.rows())) == sorted(map(tuple, data))

        view.type_filter("no site has this")
        assert view.info() == "0 sites, page 1 of 1" and view.rows() == []


@pytest.mark.corpus
@pytest.mark.slow
def test_chromium_pages_through_the_vmlinux_table(corpus, tmp_path: Path) -> None:
    """Paging 33,690 sites 200 at a time with the buttons, and a filter that pages too."""
    page = _report(tmp_path, corpus.vmlinux)
    data = _site_data(page)
    assert len(data) == 33690
    with _browser(tmp_path, page) as view:
        view.wait_rendered(60)
        assert view.rows() == data[:200]
        view.click("#next")
        assert view.info() == "33690 sites, page 2 of 169" and view.rows() == data[200:400]
        view.click("#prev")
        view.click("#prev")  # at page 1: stays
        assert view.info() == "33690 sites, page 1 of 169" and view.rows() == data[:200]

        view.type_filter("tcp_")
        kept = _matching(data, "tcp_")
        pages = -(-len(kept) // 200)
        assert len(kept) > 400 and view.info() == f"{len(kept)} sites, page 1 of {pages}"
        for _ in range(pages + 2):  # past the last page: stays there
            view.click("#next")
        assert view.info() == f"{len(kept)} sites, page {pages} of {pages}"
        assert view.rows() == kept[(pages - 1) * 200 :]


def test_a_name_that_opens_an_html_comment_leaves_the_page_working(tmp_path: Path) -> None:
    """A function named ``<!--<script>`` in the embedded site data put the browser's parser where
    ``</script>`` no longer ends the element: it swallowed the page's own script, and the table
    never rendered. The data now holds no ``<`` at all, and reads back as the names."""
    page = _report(tmp_path, hostile_object(tmp_path))
    found = re.search(r'<script type="application/json" id="site-data">(.*?)</script>', page.read_text(), re.S)
    assert found is not None and "<" not in found.group(1)
    assert {row[3] for row in _site_data(page)} >= set(HOSTILE_FUNCTIONS)  # the function column
    dom = _chromium(tmp_path, page, "--dump-dom", "--virtual-time-budget=5000").stdout
    assert 'data-rendered="yes"' in dom
