#!/usr/bin/env python3
"""Prove a speed change left every scan result as it was: digest everything a scan gives, compare.

Usage: python3 bench/same.py --save FILE     (before the change)
       python3 bench/same.py --compare FILE  (after it: exit 1 and name each difference)
       [--quick: fixtures and vmlinux images only, no module trees and no CLI runs]

For every input (every corpus kernel's vmlinux, every fixture and fuzz regression, every file of
every corpus module tree) one line: the sha256 of every ``Site`` field, the records (tables included),
the generation, stubs, mcount entries and function table, and the scan's JSON, CSV and table
texts (the JSON checked against ``json.dumps`` of the dict form too), or the one-line error. Then
one line per module tree and format for ``python3 -m rewriter scan --jobs 2``, the batch path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from boot import KERNELS  # noqa: E402

from rewriter.batch import expand  # noqa: E402
from rewriter.elf.image import Image  # noqa: E402
from rewriter.errors import RewriteError  # noqa: E402
from rewriter.report import scanfmt  # noqa: E402
from rewriter.sites import Scan, scan  # noqa: E402

CORPUS = Path.home() / ".cache/mcountrw/corpus/root"


def digest(result: Scan) -> str:
    h = hashlib.sha256()
    for part in (result.path, result.kind, result.endian, result.abi, result.generation, result.weak_max_offset):
        h.update(repr(part).encode())
    for site in result.sites:
        h.update(repr(tuple(site)).encode())
    rec = result.records
    h.update(repr((rec.count, rec.zeroed, rec.unmatched, rec.duplicates, rec.skipped)).encode())
    for t in rec.tables:
        h.update(repr((t.section, t.addr, t.file_offset, t.values.dtype.str)).encode() + t.values.tobytes())
    h.update(repr((result.mcount_entries, result.stubs)).encode())
    f = result.functions
    for column in (f.start, f.lep, f.end, f.name_index):
        h.update(column.dtype.str.encode() + column.tobytes())
    text = scanfmt.image_json_text(result)
    assert json.loads(text) == scanfmt.image_json(result), f"{result.path}: JSON text differs from the dict"
    for out in (text, scanfmt.csv_rows_text(result), scanfmt.table_text(result, None)):
        h.update(out.encode())
    return h.hexdigest()


def one(path: Path) -> str:
    try:
        return digest(scan(Image.load(path)))
    except RewriteError as e:
        return f"error {e}"


def inputs(quick: bool) -> Iterator[Path]:
    for name in KERNELS:
        yield KERNELS[name].vmlinux(CORPUS)
    yield from sorted(p for p in (ROOT / "fixtures/bin").iterdir() if p.is_file())
    yield from sorted(p for p in (ROOT / "tests/fuzz_regressions").iterdir() if p.suffix == ".elf")
    if not quick:
        for name in KERNELS:
            yield from expand([KERNELS[name].modules(CORPUS)])[0]


def cli_lines() -> Iterator[str]:
    for name in KERNELS:
        tree = KERNELS[name].modules(CORPUS)
        for fmt in ("json", "csv", "table"):
            out = subprocess.run(
                [sys.executable, "-m", "rewriter", "scan", "--jobs", "2", "--format", fmt, str(tree)],
                cwd=ROOT,
                capture_output=True,
                check=False,
            )
            h = hashlib.sha256(out.stdout + out.stderr + str(out.returncode).encode()).hexdigest()
            yield f"cli {name} {fmt} {h}"


def lines(quick: bool) -> Iterator[str]:
    for path in inputs(quick):
        yield f"{path} {one(path)}"
    if not quick:
        yield from cli_lines()


def main() -> int:
    ap = argparse.ArgumentParser()
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--save", type=Path)
    what.add_argument("--compare", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    got = list(lines(args.quick))
    if args.save:
        args.save.write_text("\n".join(got) + "\n")
        print(f"same: {len(got)} digests saved to {args.save}")
        return 0
    want = args.compare.read_text().splitlines()
    if args.quick:
        want = want[: len(got)]
    bad = [f"- {w}\n+ {g}" for w, g in zip(want, got, strict=False) if w != g]
    if len(want) != len(got):
        bad.append(f"{len(want)} lines saved, {len(got)} now")
    for line in bad[:20]:
        print(line)
    print(f"same: {len(got)} digests, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
