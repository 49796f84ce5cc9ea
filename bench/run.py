#!/usr/bin/env python3
"""The benchmark: mcountrw's speed targets, each measured side by side with its anchor in one run.

Usage: python3 bench/run.py [--repeat N] [--only NAME ...] [--write bench/RESULTS.md]

Every case runs as a real command (a fresh process, as a user would run it), N times; the table
shows the median wall time, the best, and the peak resident memory of the slowest run (from
wait4's rusage, children included). Anchors are the tools a kernel developer would otherwise use
(binutils objdump piped into grep). The corpus must be fetched (bash corpus/fetch.sh).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("MCOUNTRW_CORPUS") or Path.home() / ".cache/mcountrw/corpus") / "root"
VMLINUX = CORPUS / "boot/vmlinux-6.1.0-50-powerpc64le"
MODULES = CORPUS / "lib/modules/6.1.0-50-powerpc64le/kernel"
OBJDUMP = "powerpc64le-linux-gnu-objdump"
MCOUNTRW = [sys.executable, "-m", "rewriter"]


@dataclass(frozen=True)
class Case:
    name: str
    target: str  # what the issue asks for, in words
    command: str  # shell command; {tmp} is a scratch directory, {mcountrw} the tool
    limit: float | None = None  # seconds, if the target is absolute
    anchor: str | None = None  # name of the case this one is compared with
    prepare: str | None = None  # shell command run (untimed) before each repetition


def cases() -> list[Case]:
    m = " ".join(shlex.quote(a) for a in MCOUNTRW)
    v, mods = shlex.quote(str(VMLINUX)), shlex.quote(str(MODULES))
    return [
        Case("objdump vmlinux", "anchor", f"{OBJDUMP} -d {v} | grep -c '<_mcount>'"),
        Case(
            "scan vmlinux",
            "<= 0.5 s, >= 4x objdump+grep, <= 300 MB",
            f"{m} scan --format json -o {{tmp}}/v.json {v}",
            0.5,
            "objdump vmlinux",
        ),
        Case(
            "objdump module tree",
            "anchor",
            # In a module the `bl` is unrelocated: the relocation names _mcount.
            f"find {mods} -name '*.ko' -print0 | xargs -0 -P2 -n 64 {OBJDUMP} -dr | grep -c 'R_PPC64_REL24.*_mcount'",
        ),
        Case(
            "scan module tree",
            "<= 4 s on 2 cores, faster than objdump",
            f"{m} scan --jobs 2 --format json -o {{tmp}}/m.json {mods}",
            4.0,
            "objdump module tree",
        ),
        Case("nop vmlinux", "<= 1.0 s incl. output and log", f"{m} nop {v} -o {{tmp}}/vm.nop", 1.0),
        Case(
            "undo vmlinux",
            "<= 1.0 s",
            f"{m} undo {{tmp}}/vm.keep --log {{tmp}}/vm.keep.mcountrw.jsonl -o {{tmp}}/vm.back",
            1.0,
            prepare=f"test -f {{tmp}}/vm.keep || {m} nop {v} -o {{tmp}}/vm.keep",
        ),
        Case(
            "audit vmlinux",
            "<= 3 s incl. the mflr-nop safety walk",
            f"{m} audit --format json -o {{tmp}}/a.json {v}",
            3.0,
        ),
        Case(
            "audit module tree",
            "<= 15 s on 2 cores",
            f"{m} audit --jobs 2 --format json -o {{tmp}}/am.json {mods}",
            15.0,
        ),
        Case(
            "prenop whole tree",
            "<= 15 s on 2 cores (vmlinux + 3,126 modules, in place, on a copy)",
            f"{m} prenop --policy {ROOT}/examples/keep-core.policy --in-place --strip-signature --jobs 2 "
            f"--log-dir {{tmp}}/logs {{tmp}}/tree/vmlinux {{tmp}}/tree/kernel >/dev/null",
            15.0,
            prepare=f"rm -rf {{tmp}}/tree {{tmp}}/logs && mkdir -p {{tmp}}/tree && cp {v} {{tmp}}/tree/vmlinux "
            f"&& cp -r {mods} {{tmp}}/tree/kernel",
        ),
        Case(
            "check-plan T=3 K=2",
            "< 5 s (each built-in)",
            " && ".join(
                f"{m} check-plan --builtin {b} --tasks 3 --entries 2 >/dev/null || test $? = 1"
                for b in ("naive-enable", "b8-enable", "mflr-first-enable", "disable", "reverse-disable")
            ),
            5.0,
        ),
    ]


def run_once(command: str, tmp: str) -> tuple[float, int, int]:
    """(wall seconds, peak RSS in MB of the process tree's largest member, exit status)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command.format(tmp=tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"bench: command failed ({status}): {command}\n{err}")
    return wall, usage.ru_maxrss // 1024, status


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if not VMLINUX.exists():
        print("bench: corpus missing: run bash corpus/fetch.sh", file=sys.stderr)
        return 2
    if not shutil.which(OBJDUMP):
        print(f"bench: {OBJDUMP} missing (apt-get install binutils-powerpc64le-linux-gnu)", file=sys.stderr)
        return 2
    results: dict[str, tuple[float, float, int]] = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcountrw-bench-") as tmp:
        for case in cases():
            if args.only and case.name not in args.only and case.anchor not in (args.only or []):
                continue
            walls, peak = [], 0
            for _ in range(args.repeat):
                if case.prepare:
                    subprocess.run(["bash", "-c", case.prepare.format(tmp=tmp)], check=True, capture_output=True)
                wall, rss, _ = run_once(case.command, tmp)
                walls.append(wall)
                peak = max(peak, rss)
            med = statistics.median(walls)
            results[case.name] = (med, min(walls), peak)
            verdict = ""
            if case.limit is not None:
                verdict = "meets" if med <= case.limit else "MISSES"
            if case.anchor and case.anchor in results:
                ratio = results[case.anchor][0] / med
                verdict += f"; {ratio:.1f}x the anchor"
            rows.append(f"| {case.name} | {med:.3f} | {min(walls):.3f} | {peak} | {case.target} | {verdict} |")
            print(rows[-1], flush=True)
    table = "\n".join(
        [
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d')}; repetitions: {args.repeat}; command: `python3 bench/run.py`",
            "",
            "| case | median s | best s | peak RSS MB | target | verdict |",
            "| --- | ---: | ---: | ---: | --- | --- |",
            *rows,
        ]
    )
    if args.write:
        head = args.write.read_text().split("<!-- results -->")[0]
        args.write.write_text(head + "<!-- results -->\n\n" + table + "\n")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
