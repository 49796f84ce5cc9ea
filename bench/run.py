#!/usr/bin/env python3
"""The benchmark: mcountrw's speed targets, each measured side by side with its anchor in one run.

Usage: python3 bench/run.py [--repeat N] [--only NAME ...] [--against DIR ...] [--write bench/RESULTS.md]

Every case runs as a real command (a fresh process, as a user would run it), N times; the table
shows the median wall time, the best, the median CPU time (user + system) and the peak resident
memory of the largest process (from wait4's rusage, children included). On a machine other work
shares, the CPU time says what the wall time cannot: the work a case itself did.

Anchors are the tools a kernel developer would otherwise use (binutils objdump, piped into grep
where there is an `_mcount` to grep for) and, for compressed module trees, the floor: `xz -dc` over
the same files with the same parallelism. An anchor and the cases measured against it take turns,
so that a change in the machine's load falls on both sides of a ratio. The corpus must be fetched
(bash corpus/fetch.sh); cases of a kernel missing from it are skipped with a note.

Side by side with other checkouts (``--against DIR``, e.g. a ``git worktree`` of an older commit):
every case that runs mcountrw also runs, in turn with it, as the same command line with DIR's
mcountrw (its own scratch directory, its own prepare step, so that an older tool undoes the log it
wrote itself); the verdict says how much slower or faster this tree is than each, by median wall
time and by median CPU time. A case the other checkout cannot run (a newer feature) says so.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from boot import KERNELS  # noqa: E402  (the one home of the corpus paths)

CORPUS = Path(os.environ.get("MCOUNTRW_CORPUS") or Path.home() / ".cache/mcountrw/corpus") / "root"
VMLINUX = KERNELS["6.1"].vmlinux(CORPUS)
MODULES = KERNELS["6.1"].modules(CORPUS)
OBJDUMP = "powerpc64le-linux-gnu-objdump"
XZ = "xz"
TOOL = "{mcountrw}"  # where a command runs mcountrw: this tree's, or a checkout's given by --against


def tool(checkout: Path) -> str:
    """The checkout's mcountrw, whatever is installed: its tree first on the path, and not the
    current directory's (``-P``), so that this tree and an older one are run the same way."""
    return f"env PYTHONPATH={shlex.quote(str(checkout))} {shlex.quote(sys.executable)} -P -m rewriter"


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
    since: str | None = None  # the commit that brought what the case measures (older checkouts lack it)
    checkout: Path = ROOT  # whose mcountrw runs it
    twin_of: str | None = None  # the case this one repeats with another checkout (--against)

    @property
    def runs_mcountrw(self) -> bool:
        return TOOL in self.command or TOOL in (self.prepare or "")

    def shell(self, text: str, tmp: str) -> str:
        """``text`` (the command or the prepare step) ready for bash: a twin has a scratch
        directory of its own, so that each tool reads only the files it wrote."""
        if self.twin_of is not None:
            tmp = f"{tmp}/{self.checkout.name}"
        return text.replace(TOOL, tool(self.checkout)).format(tmp=tmp)


def twin(case: Case, checkout: Path) -> Case:
    """``case`` as ``checkout``'s mcountrw runs it."""
    name = f"{case.name} @{label(checkout)}"
    return replace(case, name=name, target=f"{case.name}, {label(checkout)}", checkout=checkout, twin_of=case.name,
                   anchor=None, limit=None, max_ratio=None)  # fmt: skip


def comparable(case: Case, checkout: Path) -> bool:
    """Whether ``checkout`` runs ``case`` as this tree does: it runs mcountrw, and the checkout has
    what the case measures (an older tool may accept the same command line and do less)."""
    if not case.runs_mcountrw:
        return False
    if case.since is None:
        return True
    ancestor = ["git", "-C", str(checkout), "merge-base", "--is-ancestor", case.since, "HEAD"]
    return subprocess.run(ancestor, capture_output=True).returncode == 0


def label(checkout: Path) -> str:
    """A checkout's short commit name (its directory's name if it is no git work tree)."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else checkout.name


def cases() -> list[Case]:
    m = TOOL
    v, mods = shlex.quote(str(VMLINUX)), shlex.quote(str(MODULES))
    # What a pre-nop of a 6.1 vmlinux does (issue 12): every site nopped and unrecorded but the
    # one the boot needs; the kernel refuses nopped words at a recorded place without --drop-records.
    nop_args = "--drop-records --exclude do_one_initcall"
    keep = f"test -f {{tmp}}/vm.keep || {m} nop {v} -o {{tmp}}/vm.keep {nop_args}"
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
        Case(
            "nop vmlinux",
            "<= 1.0 s incl. output and log",
            f"{m} nop {v} -o {{tmp}}/vm.nop {nop_args}",
            1.0,
        ),
        Case(
            "undo vmlinux",
            "<= 1.0 s",
            f"{m} undo {{tmp}}/vm.keep --log {{tmp}}/vm.keep.mcountrw.jsonl -o {{tmp}}/vm.back",
            1.0,
            prepare=keep,
        ),
        Case(
            "verify vmlinux",
            "for the record",
            f"{m} verify {v} {{tmp}}/vm.keep --log {{tmp}}/vm.keep.mcountrw.jsonl",
            prepare=keep,
        ),
        Case(
            "apply vfs_* back",
            "for the record (75 sites of the nopped vmlinux back from its log, which it carries on)",
            f"{m} apply --to enabled --only 'vfs_*' {{tmp}}/vm.keep -o {{tmp}}/vm.vfs",
            prepare=keep,
            since="4ebea38",  # the patch log as a source of sites (issue 12)
        ),
        Case("start-up --version", "for the record (no numpy, no audit imported)", f"{m} --version"),
        Case("start-up --help", "for the record", f"{m} --help"),
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
        Case(
            "check-plan every request",
            "< 20 s (63 distinct sites, 3 tasks x 4 entries, stale fetch: the largest plan `plan` or `apply` makes; "
            "docs/state-machine.md)",
            f"{m} check-plan {ROOT}/bench/every-request.plan.json --tasks 3 --entries 4 >/dev/null",
            20.0,
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
                f"audit vmlinux {name}",
                "<= 3 s, as 6.1's (the mflr-nop safety walk on patchable; n/a on ool)",
                f"{m} audit --format json -o {{tmp}}/a{name}.json {v}",
                3.0,
                needs=vm,
            ),
            Case(
                f"xz -dc module tree {name}",
                "floor",
                f"find {mods} -name '*.ko.xz' -print0 | xargs -0 -P2 -n 64 {XZ} -dc >/dev/null",
                needs=tree,
            ),
            Case(
                f"lzma alone module tree {name}",
                "for the record: Python's lzma over the same files, 2 processes, no scan (bench/lzma_alone.py)",
                f"{shlex.quote(sys.executable)} bench/lzma_alone.py --jobs 2 {mods}",
                anchor=f"xz -dc module tree {name}",
                needs=tree,
            ),
            Case(
                f"scan without sites module tree {name}",
                "for the record: the same scan, every module's site loop finding nothing"
                " (bench/scan_without_sites.py): the best a faster site loop and JSON could give",
                f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -P bench/scan_without_sites.py"
                f" --jobs 2 --format json -o {{tmp}}/n{name}.json {mods}",
                anchor=f"xz -dc module tree {name}",
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
            *prenop_cases(m, name, v, mods, tree),
        ]
    return out


def prenop_cases(m: str, name: str, v: str, mods: str, tree: Path) -> list[Case]:
    """keep-core.policy over a whole 6.12/7.2 tree (vmlinux and every .ko.xz, in place, on a copy),
    against the floor of what it cannot avoid: ``xz -d`` then ``xz -c`` (Kbuild's settings) of the
    modules it rewrites, two at a time. The list of those modules comes from one untimed prenop run
    on a copy: the files that differ from the originals."""
    copy = (
        f"rm -rf {{tmp}}/p{name} && mkdir -p {{tmp}}/p{name} && cp {v} {{tmp}}/p{name}/vmlinux "
        f"&& cp -r {mods} {{tmp}}/p{name}/kernel"
    )
    prenop = (
        f"{m} prenop --policy {ROOT}/examples/keep-core.policy --in-place --strip-signature --jobs 2 "
        f"--log-dir {{tmp}}/p{name}-logs {{tmp}}/p{name}/vmlinux {{tmp}}/p{name}/kernel >/dev/null"
    )
    listed = (
        f"test -s {{tmp}}/rewritten{name} || ({copy} && rm -rf {{tmp}}/p{name}-logs && {prenop} && "
        f"cd {{tmp}}/p{name}/kernel && find . -name '*.ko.xz' | sort | while read -r f; do "
        f'cmp -s "$f" {mods}/"$f" || echo {mods}/"$f"; done > {{tmp}}/rewritten{name})'
    )
    return [
        Case(
            f"xz -d + xz -c rewritten modules {name}",
            "floor",
            f'xargs -a {{tmp}}/rewritten{name} -P2 -n 64 sh -c \'for f; do {XZ} -dc "$f" | '
            f"{XZ} --check=crc32 --lzma2=dict=1MiB -c >/dev/null; done' sh",
            prepare=listed,
            needs=tree,
            since="4ebea38",  # a floor, but its list comes from this prenop: never run with an older one
        ),
        Case(
            f"prenop whole tree {name}",
            "<= 1.5x the xz -d + xz -c floor, 2 cores (vmlinux + every .ko.xz, in place, on a copy)",
            prenop,
            anchor=f"xz -d + xz -c rewritten modules {name}",
            max_ratio=1.5,
            prepare=f"{copy} && rm -rf {{tmp}}/p{name}-logs",
            needs=tree,
            since="4ebea38",
        ),
    ]


class Run(NamedTuple):
    wall: float  # seconds
    cpu: float  # user + system seconds of the whole process tree
    rss: int  # peak resident MB of the tree's largest member
    failed: str | None = None  # a twin the other checkout cannot run: its error


class Result(NamedTuple):
    median: float
    best: float
    cpu: float  # median
    peak: int
    failed: str | None = None


# Python as an installed tool runs: from its bytecode. An environment with PYTHONDONTWRITEBYTECODE
# (this machine's has it) makes every run compile each module it imports from source, ~0.1 s for an
# audit, which would weigh on a bigger checkout more; so the checkouts are compiled before the runs.
ENV: Final = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def compile_checkouts(checkouts: set[Path]) -> None:
    for checkout in sorted(checkouts):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "rewriter")], check=True, env=ENV)


def run_once(case: Case, tmp: str) -> Run:
    """One run of ``case``; a failure ends the benchmark, except a twin's (the older checkout may
    lack the feature): that is reported in its row."""
    command = case.shell(case.command, tmp)
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-o", "pipefail", "-c", command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=ENV,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if status and case.twin_of is None:
        raise SystemExit(f"bench: command failed ({status}): {command}\n{err}")
    failed = (err.strip().splitlines() or [f"exit status {status}"])[-1] if status else None
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, failed)


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
        joins = case.twin_of or case.anchor
        group = home.get(joins) if joins else None
        if group is None:
            group = []
            out.append(group)
        group.append(case)
        home[case.name] = group
    return out


def verdict(case: Case, med: float, results: dict[str, Result], twins: list[Case]) -> str:
    if case.twin_of is not None:
        failed = results[case.name].failed
        return f"cannot run it: {failed}" if failed else ""
    parts = []
    if case.limit is not None:
        parts.append("meets" if med <= case.limit else "MISSES")
    if case.anchor and case.anchor in results:
        base = results[case.anchor].median
        ratio = med / base
        if case.max_ratio is not None:
            parts.append("meets" if ratio <= case.max_ratio else "MISSES")
        parts.append(f"{base / med:.1f}x the anchor's speed" if ratio < 1 else f"{ratio:.2f}x the anchor's time")
    mine = results[case.name]
    for other in twins:
        r = results.get(other.name)
        if r is None or r.failed:
            continue
        wall, cpu = mine.median / r.median - 1, mine.cpu / r.cpu - 1 if r.cpu else 0.0
        worse = " (SLOWER)" if wall > 0.05 else ""
        parts.append(f"{wall:+.0%} wall, {cpu:+.0%} CPU vs {label(other.checkout)}{worse}")
    return "; ".join(parts)


def select(only: list[str] | None, against: list[Path]) -> tuple[list[Case], list[str]]:
    """The cases to run (a named case brings its anchor; each one that runs mcountrw, its twins
    with the ``against`` checkouts, right after it) and a note for each one skipped."""
    every = [c for case in cases() for c in (case, *(twin(case, d) for d in against if comparable(case, d)))]
    wanted = set(only or (c.name for c in every))
    wanted |= {c.anchor for c in every if c.name in wanted and c.anchor}
    wanted |= {c.name for c in every if c.twin_of in wanted}
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
    for d in {c.checkout for c in selected if c.twin_of is not None}:
        os.makedirs(f"{tmp}/{d.name}", exist_ok=True)
    for group in groups(selected):
        runs: dict[str, list[Run]] = {c.name: [] for c in group}
        for _ in range(repeat):
            for case in group:
                if case.prepare:
                    prepare = ["bash", "-c", case.shell(case.prepare, tmp)]
                    prepared = subprocess.run(prepare, capture_output=True, env=ENV)
                    if prepared.returncode and case.twin_of is None:
                        raise SystemExit(f"bench: {case.name}: prepare failed:\n{prepared.stderr.decode()}")
                runs[case.name].append(run_once(case, tmp))
        for case in group:
            done = runs[case.name]
            walls = [r.wall for r in done]
            failed = next((r.failed for r in done if r.failed), None)
            cpu = statistics.median(r.cpu for r in done)
            results[case.name] = Result(statistics.median(walls), min(walls), cpu, max(r.rss for r in done), failed)
        for case in group:
            print(row(case, results, selected), flush=True)
    return results


def row(case: Case, results: dict[str, Result], selected: list[Case]) -> str:
    r = results[case.name]
    twins = [c for c in selected if c.twin_of == case.name]
    return (
        f"| {case.name} | {r.median:.3f} | {r.best:.3f} | {r.cpu:.2f} | {r.peak} | {case.target} "
        f"| {verdict(case, r.median, results, twins)} |"
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
    ap.add_argument(
        "--against", type=Path, action="append", default=[], help="also run each mcountrw case with this checkout"
    )
    args = ap.parse_args()
    if not VMLINUX.exists():
        print("bench: corpus missing: run bash corpus/fetch.sh", file=sys.stderr)
        return 2
    for tool, package in ((OBJDUMP, "binutils-powerpc64le-linux-gnu"), (XZ, "xz-utils")):
        if not shutil.which(tool):
            print(f"bench: {tool} missing (apt-get install {package})", file=sys.stderr)
            return 2
    against = [d.resolve() for d in args.against]
    selected, notes = select(args.only, against)
    for note in notes:
        print(f"bench: {note}", file=sys.stderr)
    compile_checkouts({ROOT, *against})
    before = load()
    with tempfile.TemporaryDirectory(prefix="mcountrw-bench-") as tmp:
        results = measure(selected, args.repeat, tmp)
    table = "\n".join(
        [
            f"Machine: {machine()}  ",
            f"Date: {time.strftime('%Y-%m-%d')}; repetitions: {args.repeat}, each group's cases taking turns; "
            f"command: `python3 bench/run.py{''.join(f' --against {label(d)}' for d in against)}`; "
            "bytecode compiled first  ",
            f"Load before: {before}; after: {load()}",
            *(f"Note: {n}" for n in notes),
            "",
            "| case | median s | best s | CPU s | peak RSS MB | target | verdict |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
            *(row(c, results, selected) for c in selected),
        ]
    )
    if args.write:
        # A new file gets the table alone; an existing one keeps what it says above its results.
        head = args.write.read_text().split("<!-- results -->")[0] if args.write.exists() else ""
        args.write.write_text(head + "<!-- results -->\n\n" + table + "\n")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
