#!/usr/bin/env python3
"""The benchmark: mcountrw's speed targets, each measured side by side with its anchor in one run.

Usage: python3 bench/run.py [--repeat N] [--only NAME ...] [--write bench/RESULTS.md]

Every case runs as a real command (a fresh process, as a user would run it), N times; the table
shows the median wall time, the best, the median CPU time (user + system) and the peak resident
memory of the largest process (from wait4's rusage, children included). On a machine other work
shares, the CPU time says what the wall time cannot: the work a case itself did.

Anchors are the tools a kernel developer would otherwise use (binutils objdump, piped into grep
where there is an `_mcount` to grep for) and, for compressed module trees, the floor: `xz -dc` over
the same files with the same parallelism. An anchor and the cases measured against it take turns,
so that a change in the machine's load falls on both sides of a ratio. The corpus must be fetched
(bash corpus/fetch.sh); cases of a kernel missing from it are skipped with a note.
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from boot import KERNELS  # noqa: E402  (the one home of the corpus paths)

CORPUS = Path(os.environ.get("MCOUNTRW_CORPUS") or Path.home() / ".cache/mcountrw/corpus") / "root"
VMLINUX = KERNELS["6.1"].vmlinux(CORPUS)
MODULES = KERNELS["6.1"].modules(CORPUS)
OBJDUMP = "powerpc64le-linux-gnu-objdump"
XZ = "xz"
# Run from the checkout, so that `-m rewriter` is this tree's package whatever is installed.
MCOUNTRW = [sys.executable, "-m", "rewriter"]


@dataclass(frozen=True)
class Case:
    name: str
    target: str  # what the issue asks for, in words
    command: str  # shell command; {tmp} is a scratch directory, {mcountrw} the tool
    limit: float | None = None  # seconds, if the target is absolute
    anchor: str | None = None  # name of the case this one is compared with
    prepare: str | None = None  # shell command run (untimed) before each repetition
    # At most this many times the anchor's median: 0.25 is ">= 4x the anchor's speed", 1.3 is
    # "within 1.3x the floor's time".
    max_ratio: float | None = None
    needs: Path | None = None  # the case is skipped when this corpus file is missing


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
        # --drop-records: a nopped call slot keeps no record (what boots; rewrite refuses otherwise)
        Case("nop vmlinux", "<= 1.0 s incl. output and log", f"{m} nop --drop-records {v} -o {{tmp}}/vm.nop", 1.0),
        Case(
            "undo vmlinux",
            "<= 1.0 s",
            f"{m} undo {{tmp}}/vm.keep --log {{tmp}}/vm.keep.mcountrw.jsonl -o {{tmp}}/vm.back",
            1.0,
            prepare=f"test -f {{tmp}}/vm.keep || {m} nop --drop-records {v} -o {{tmp}}/vm.keep",
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
        *new_kernel_cases(m),
    ]


def new_kernel_cases(m: str) -> list[Case]:
    """6.12 (patchable) and 7.2 (ool): no `bl _mcount` any more, so the vmlinux anchor is objdump's
    disassembly alone; their modules are .ko.xz, so the module tree's anchor is the floor of just
    decompressing it: `xz -dc` over the same files, two at a time like `scan --jobs 2`."""
    out = []
    for name, tree_target in (
        ("6.12", "<= 1.3x the xz floor, 2 cores"),
        ("7.2", "for the record (<= 1.3x the xz floor)"),
    ):
        kernel = KERNELS[name]
        v, mods = shlex.quote(str(kernel.vmlinux(CORPUS))), shlex.quote(str(kernel.modules(CORPUS)))
        vm, tree = kernel.vmlinux(CORPUS), kernel.modules(CORPUS)
        out += [
            Case(f"objdump -d vmlinux {name}", "anchor", f"{OBJDUMP} -d {v} >/dev/null", needs=vm),
            Case(
                f"scan vmlinux {name}",
                ">= 4x objdump -d",
                f"{m} scan --format json -o {{tmp}}/v{name}.json {v}",
                anchor=f"objdump -d vmlinux {name}",
                max_ratio=0.25,
                needs=vm,
            ),
            Case(
                f"xz -dc module tree {name}",
                "floor",
                f"find {mods} -name '*.ko.xz' -print0 | xargs -0 -P2 -n 64 {XZ} -dc >/dev/null",
                needs=tree,
            ),
            Case(
                f"scan module tree {name}",
                tree_target,
                f"{m} scan --jobs 2 --format json -o {{tmp}}/m{name}.json {mods}",
                anchor=f"xz -dc module tree {name}",
                max_ratio=1.3,
                needs=tree,
            ),
        ]
    return out


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds of the whole process tree
    rss: int  # peak resident MB of the tree's largest member


class Result(NamedTuple):
    median: float
    best: float
    cpu: float  # median
    peak: int


def run_once(command: str, tmp: str) -> Run:
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command.format(tmp=tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"bench: command failed ({status}): {command}\n{err}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024)


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


def groups(selected: list[Case]) -> list[list[Case]]:
    """Each anchor with the cases measured against it, the rest alone. A group's cases take turns
    (anchor, case, anchor, case...) so that a change in the machine's load from other work falls
    on both sides of a ratio alike."""
    out: list[list[Case]] = []
    home: dict[str, list[Case]] = {}
    for case in selected:
        group = home.get(case.anchor) if case.anchor else None
        if group is None:
            group = []
            out.append(group)
        group.append(case)
        home[case.name] = group
    return out


def verdict(case: Case, med: float, results: dict[str, Result]) -> str:
    parts = []
    if case.limit is not None:
        parts.append("meets" if med <= case.limit else "MISSES")
    if case.anchor and case.anchor in results:
        base = results[case.anchor].median
        ratio = med / base
        if case.max_ratio is not None:
            parts.append("meets" if ratio <= case.max_ratio else "MISSES")
        parts.append(f"{base / med:.1f}x the anchor" if ratio < 1 else f"{ratio:.2f}x the anchor's time")
    return "; ".join(parts)


def select(only: list[str] | None) -> tuple[list[Case], list[str]]:
    """The cases to run (a named case brings its anchor) and a note for each one skipped."""
    every = cases()
    wanted = set(only or (c.name for c in every))
    wanted |= {c.anchor for c in every if c.name in wanted and c.anchor}
    chosen, notes = [], []
    for case in every:
        if case.name not in wanted:
            continue
        if case.needs is not None and not case.needs.exists():
            notes.append(f"skipped {case.name}: {case.needs} is not in the corpus (bash corpus/fetch.sh)")
            continue
        chosen.append(case)
    return chosen, notes


def measure(selected: list[Case], repeat: int, tmp: str) -> dict[str, Result]:
    """(median, best, peak RSS) per case, printing each row as soon as its group is done."""
    results: dict[str, Result] = {}
    for group in groups(selected):
        runs: dict[str, list[Run]] = {c.name: [] for c in group}
        for _ in range(repeat):
            for case in group:
                if case.prepare:
                    subprocess.run(["bash", "-c", case.prepare.format(tmp=tmp)], check=True, capture_output=True)
                runs[case.name].append(run_once(case.command, tmp))
        for case in group:
            walls = [r.wall for r in runs[case.name]]
            cpu = statistics.median(r.cpu for r in runs[case.name])
            results[case.name] = Result(statistics.median(walls), min(walls), cpu, max(r.rss for r in runs[case.name]))
            print(row(case, results), flush=True)
    return results


def row(case: Case, results: dict[str, Result]) -> str:
    r = results[case.name]
    return (
        f"| {case.name} | {r.median:.3f} | {r.best:.3f} | {r.cpu:.2f} | {r.peak} | {case.target} "
        f"| {verdict(case, r.median, results)} |"
    )


def load() -> str:
    """The load average, and how many processes other than ours were running on a CPU."""
    one, five, _ = os.getloadavg()
    mine = {os.getpid(), *(int(p) for p in os.listdir(f"/proc/{os.getpid()}/task"))}
    running = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        running += stat[stat.rindex(")") + 2] == "R"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min); {running} other process(es) running"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args()
    if not VMLINUX.exists():
        print("bench: corpus missing: run bash corpus/fetch.sh", file=sys.stderr)
        return 2
    for tool, package in ((OBJDUMP, "binutils-powerpc64le-linux-gnu"), (XZ, "xz-utils")):
        if not shutil.which(tool):
            print(f"bench: {tool} missing (apt-get install {package})", file=sys.stderr)
            return 2
    selected, notes = select(args.only)
    for note in notes:
        print(f"bench: {note}", file=sys.stderr)
    before = load()
    with tempfile.TemporaryDirectory(prefix="mcountrw-bench-") as tmp:
        results = measure(selected, args.repeat, tmp)
    table = "\n".join(
        [
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d')}; repetitions: {args.repeat}, each group's cases taking turns; "
            "command: `python3 bench/run.py`  ",
            f"Load before: {before}; after: {load()}",
            *(f"Note: {n}" for n in notes),
            "",
            "| case | median s | best s | CPU s | peak RSS MB | target | verdict |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
            *(row(c, results) for c in selected),
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
