"""`mcountrw audit --format html`: one self-contained file that headless Chromium renders, with
the site table filled in by its script and the charts drawn; checked in the DOM after the script
ran and in the pixels of a screenshot."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from boot import require_tool
from conftest import FIXTURES
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


def _chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    exe = require_tool("chromium")
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [str(exe), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


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
