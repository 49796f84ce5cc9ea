"""Fuzzing: ten thousand mutated files through scan, audit and apply (then verify and undo), with
no uncaught exception, no hang and no runaway allocation.

Strategy: hypothesis drives a structure-aware mutator. Each input is one seed (the small
committed fixtures, corpus modules, and xz/gzip/zstd-compressed fixtures) with one to four
mutations drawn from: set one numeric field of a header or table entry (ELF header, program and
section headers, the first and last entries of symbol, relocation, dynamic and ``__mcount_loc``
tables) to a boundary value, a random value, a nearby value or another field's value; flip bytes
inside one structure; truncate at or near a structure boundary; copy one section header over
another. Hypothesis is run derandomized (the same inputs on every run) with generation only
(nothing to shrink: failures are collected, not raised).

Every input goes, through the library (in a worker process), to ``sites.scan``, to ``audit.audit_image``,
and to ``rewrite.apply_file`` with drawn options, for real: what it accepts must
verify against its log and undo to the input byte for byte (:func:`apply_verify_undo`). A
RewriteError is a clean rejection; anything else is a bug. Each input has a time bound (SIGALRM) and
each of the worker processes that run the inputs (two, while hypothesis draws the next ones) an
address-space bound, so a hang or a multi-gigabyte allocation is counted, not suffered.

The figures (inputs, rejections, exceptions, hangs, slowest input) are printed, and recorded in
docs/bad-input.md. A failing input is written out; copy it into tests/fuzz_regressions/, whose
files :func:`test_fuzz_regressions_stay_fixed` replays on every run.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import lzma
import os
import pkgutil
import resource
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest
import zstandard
from boot import KERNELS, corpus_dir, corpus_modules_dir, require_corpus
from conftest import Hang, time_bound
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants, constants_from_module
from hypothesis.internal.floats import float_to_int
from sortedcontainers import SortedSet
from test_bad_input import SMALL, Elf, Field, Region, regions

import rewriter
from rewriter.audit import audit_image
from rewriter.elf.image import Image
from rewriter.elf.structs import ByteOrder
from rewriter.errors import RewriteError
from rewriter.files import apply_file, undo_file, verify_files
from rewriter.log import LOG_SUFFIX
from rewriter.plan import Route
from rewriter.ppc.table import build_table
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState

INPUTS = int(os.environ.get("MCOUNTRW_FUZZ_INPUTS", "10000"))
TIME_BOUND = 5.0  # seconds per input, all entry points together; a clean input takes ~3 ms
MEMORY_BOUND = 1 << 30  # bytes of address space the run may add
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"

INTERESTING = (
    0, 1, 2, 3, 4, 7, 8, 15, 16, 20, 21, 24, 40, 56, 62, 63, 64, 0x7F, 0x80, 0xFF, 0x100, 0xFF00, 0xFFF1,
    0xFFFE, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, 1 << 32, 1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1,
)  # fmt: skip


# -- seeds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: tuple[Field, ...]  # empty for compressed seeds: only their bytes are mutated
    regions: tuple[Region, ...]
    originals: tuple[int, ...]  # every field's value in the seed, to borrow from

    @property
    def order(self) -> ByteOrder:
        return "big" if self.data[5:6] == b"\x02" else "little"


def _seed(name: str, data: bytes) -> Seed:
    elf = Elf(data)
    fields = tuple(elf.fields())
    return Seed(name, data, fields, tuple(regions(data)), tuple(sorted({elf.get(f) for f in fields})))


def _compressed_seed(name: str, data: bytes) -> Seed:
    return Seed(name, data, (), (Region("compressed stream", 0, len(data)),), ())


# Modules of the current kernels (patchable 6.12, ool 7.2; signed, .ko.xz), fuzzed decompressed.
NEW_MODULES: Final = ("fs/nls/nls_utf8.ko.xz", "crypto/zstd.ko.xz")


def load_seeds() -> list[Seed]:
    seeds = [_seed(p.name, p.read_bytes()) for p in SMALL]
    modules = corpus_modules_dir()
    if modules is None or not (modules / "fs/nls/nls_utf8.ko").exists():
        require_corpus()  # fails in CI; locally the fuzz runs on the fixtures alone
    else:
        seeds.append(_seed("nls_utf8.ko", (modules / "fs/nls/nls_utf8.ko").read_bytes()))
        root = corpus_dir()
        assert root is not None  # corpus_modules_dir found it
        for kernel in ("6.12", "7.2"):
            tree = KERNELS[kernel].modules(root / "root")
            for rel in NEW_MODULES:
                seeds.append(_seed(f"{kernel} {Path(rel).name[:-3]}", lzma.decompress((tree / rel).read_bytes())))
    by_name = {p.name: p.read_bytes() for p in SMALL}
    seeds.append(_compressed_seed("clean.o.xz", lzma.compress(by_name["clean.o"])))
    seeds.append(_compressed_seed("prof-le.o.gz", gzip.compress(by_name["prof-le.o"], mtime=0)))
    zstd = zstandard.ZstdCompressor(write_checksum=True)
    seeds.append(_compressed_seed("anom-broken.o.zst", zstd.compress(by_name["anom-broken.o"])))
    return seeds


# -- the mutator ----------------------------------------------------------------------------------


class FuzzInput(NamedTuple):
    seed: str
    data: bytes
    steps: tuple[str, ...]  # what was done, for the report
    options: Options


class _Nearby(NamedTuple):
    """A drawn offset from a field's old value (the value is known only once the field is)."""

    delta: int


class _SeedDraws:
    """The strategies one seed's inputs are drawn from, built once: hypothesis validates and labels
    every strategy it is given (over each element of a ``sampled_from``), which cost more than
    running the input when they were built anew for every draw. Built once, they draw from the
    same distributions."""

    def __init__(self, seed: Seed) -> None:
        self.fields = st.sampled_from(seed.fields) if seed.fields else None
        kinds = ["field", "field", "field", "flip", "truncate", "copy-shdr"] if seed.fields else ["flip", "truncate"]
        self.kinds = st.sampled_from(kinds)
        self.regions = st.sampled_from(seed.regions)
        shdrs = [f for f in seed.fields if f.where.startswith("shdr[") and f.where.endswith(".sh_name")]
        self.shdrs = st.sampled_from(shdrs) if shdrs else None
        self.originals = st.sampled_from(seed.originals) if seed.originals else None
        self.values: dict[int, st.SearchStrategy[int | _Nearby]] = {}

    def value(self, size: int) -> st.SearchStrategy[int | _Nearby]:
        """A new value for a field of ``size`` bytes: interesting, random, near the old one, or
        another field's."""
        if size not in self.values:
            assert self.originals is not None  # a seed with fields has their values
            self.values[size] = st.one_of(
                st.sampled_from(INTERESTING),
                st.integers(0, (1 << (8 * size)) - 1),
                st.integers(-64, 64).map(_Nearby),
                self.originals,
            )
        return self.values[size]


_COUNTS: Final = st.integers(1, 4)
_TARGETS: Final = st.sampled_from([SiteState.NOPPED, SiteState.DISABLED, SiteState.ENABLED])
_ROUTES: Final = st.sampled_from([None, Route.MFLR_FIRST, Route.B8])


def fuzz_inputs(seeds: list[Seed]) -> st.SearchStrategy[FuzzInput]:
    cached = {s.name: _SeedDraws(s) for s in seeds}
    which = st.sampled_from(seeds)

    @st.composite
    def one(draw: Callable[..., Any]) -> FuzzInput:
        seed = draw(which)
        d = cached[seed.name]
        data = bytearray(seed.data)
        steps: list[str] = []
        for _ in range(draw(_COUNTS)):
            kind = draw(d.kinds)
            if kind == "field":
                f = draw(d.fields)
                old = int.from_bytes(data[f.offset : f.offset + f.size], seed.order)
                drawn = draw(d.value(f.size))
                value = (old + drawn.delta if isinstance(drawn, _Nearby) else drawn) % (1 << (8 * f.size))
                data[f.offset : f.offset + f.size] = value.to_bytes(f.size, seed.order)
                steps.append(f"{f.where} {old:#x} -> {value:#x}")
            elif kind == "flip":
                r = draw(d.regions)
                at = r.offset + draw(st.integers(0, max(r.size - 1, 0)))
                if at < len(data):
                    xor = draw(st.integers(1, 255))
                    data[at] ^= xor
                    steps.append(f"flip {r.what} byte {at:#x} ^ {xor:#x}")
            elif kind == "truncate":
                r = draw(d.regions)
                near = draw(st.sampled_from([r.offset, r.offset + r.size // 2, r.offset + r.size]))
                at = near + draw(st.integers(-4, 4))
                at = max(0, min(at, len(data)))
                del data[at:]
                steps.append(f"truncate at {at:#x} ({r.what})")
            else:
                a, b = draw(d.shdrs), draw(d.shdrs)
                if a.offset + 64 <= len(data) and b.offset + 64 <= len(data):
                    data[b.offset : b.offset + 64] = data[a.offset : a.offset + 64]
                    steps.append(f"copy {a.where[:-8]} over {b.where[:-8]}")
        target, route = draw(_TARGETS), draw(_ROUTES)
        options = Options(target, route, drop_records=draw(st.booleans()), strip_signature=draw(st.booleans()))
        return FuzzInput(seed.name, bytes(data), tuple(steps), options)

    return one()


# -- running one input under bounds -----------------------------------------------------------------


def cap_address_space(extra: int) -> None:
    """Cap this process's address space at what it has now plus ``extra``, for its life (a fuzz
    worker's): an allocation beyond it raises MemoryError (an uncaught exception, so a bug) instead
    of swapping the machine."""
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    status = Path("/proc/self/status").read_text().splitlines()
    vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    cap = vm + extra if hard == resource.RLIM_INFINITY else min(vm + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


ENTRY_POINTS: Final = ("scan", "audit", "apply, verify, undo")


def audit_entry() -> Callable[[Path], object]:
    """``rewriter.audit``'s per-image entry point (``audit_image``, which ``audit_one`` wraps in the
    same safety net as ``batch.scan_one``: the fuzz calls it bare, so the net never hides a bug).
    Imported at the top of this file, not with a guard: a renamed or lost ``audit_image`` must fail
    here, not drop the audit from the fuzz without a word."""
    table = build_table()
    return lambda path: audit_image(Image.load(path), "fuzz", table)


def entry_points() -> list[tuple[str, Callable[[Path, Options], object]]]:
    audit = audit_entry()
    points: list[tuple[str, Callable[[Path, Options], object]]] = [
        ("scan", lambda p, o: scan(Image.load(p))),
        ("audit", lambda p, o: audit(p)),
        ("apply, verify, undo", apply_verify_undo),
    ]
    assert tuple(name for name, _ in points) == ENTRY_POINTS
    return points


def apply_verify_undo(path: Path, options: Options) -> None:
    """``apply`` for real; an apply the library accepts must then verify against its own log and
    undo to the input byte for byte: a RewriteError there is a bug, not a rejection."""
    out, back = path.with_name(path.name + ".out"), path.with_name(path.name + ".back")
    log = out.with_name(out.name + LOG_SUFFIX)
    for old in (out, back, log):
        old.unlink(missing_ok=True)
    result = apply_file(path, out, Selection(), options)
    if result.output is None or result.log is None:
        return
    try:
        verdict = verify_files(path, out, result.log)
        undo_file(out, result.log, back)
    except RewriteError as e:
        raise AssertionError(f"an accepted apply, then {type(e).__name__}: {e}") from None
    assert verdict.ok, verdict.reason
    assert back.read_bytes() == path.read_bytes(), "undo did not give the input back byte for byte"


@dataclass
class Figures:
    inputs: int = 0
    accepted: Counter[str] = field(default_factory=Counter)  # per entry point
    rejected: Counter[str] = field(default_factory=Counter)
    exceptions: list[dict[str, str]] = field(default_factory=list)
    hangs: list[dict[str, str]] = field(default_factory=list)
    slowest: float = 0.0
    slowest_input: str = ""
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "exceptions": len(self.exceptions),
            "exception_places": dict(Counter(f"{e['entry']} {e['at']} {e['error'][:40]}" for e in self.exceptions)),
            "hangs": len(self.hangs),
            "slowest_input_ms": round(self.slowest * 1000, 1),
            "slowest_input": self.slowest_input,
            "seconds": round(self.seconds, 1),
        }

    def add(self, other: Figures) -> None:
        """Count in a worker's figures (the seconds are the whole run's, kept apart)."""
        self.inputs += other.inputs
        self.accepted.update(other.accepted)
        self.rejected.update(other.rejected)
        self.exceptions += other.exceptions
        self.hangs += other.hangs
        if other.slowest > self.slowest:
            self.slowest, self.slowest_input = other.slowest, other.slowest_input


def run_one(path: Path, case: FuzzInput, points: list[tuple[str, Callable[[Path, Options], object]]],
            figures: Figures, keep: Path) -> None:  # fmt: skip
    path.write_bytes(case.data)
    start = time.perf_counter()
    try:
        with time_bound(TIME_BOUND):
            for name, call in points:
                try:
                    call(path, case.options)
                    figures.accepted[name] += 1
                except RewriteError as e:
                    figures.rejected[name] += 1
                    assert "\n" not in str(e).strip(), f"{name}: multi-line message {e!r}"
                except Exception as e:
                    saved = keep / f"{hashlib.sha256(case.data).hexdigest()[:12]}.elf"
                    saved.write_bytes(case.data)
                    frame = traceback.extract_tb(e.__traceback__)[-1]
                    figures.exceptions.append({
                        "entry": name, "error": f"{type(e).__name__}: {e}"[:200], "seed": case.seed,
                        "at": f"{Path(frame.filename).name}:{frame.lineno}", "steps": "; ".join(case.steps),
                        "input": str(saved),
                    })  # fmt: skip
    except Hang:
        saved = keep / f"hang-{hashlib.sha256(case.data).hexdigest()[:12]}.elf"
        saved.write_bytes(case.data)
        figures.hangs.append({"seed": case.seed, "steps": "; ".join(case.steps), "input": str(saved)})
    elapsed = time.perf_counter() - start
    figures.inputs += 1
    if elapsed > figures.slowest:
        figures.slowest, figures.slowest_input = elapsed, f"{case.seed}: {'; '.join(case.steps)}"


# The inputs run in worker processes while hypothesis draws the next ones (drawing costs about
# half as much as running): each worker has its own input file and the memory cap for its life.
JOBS: Final = min(2, os.cpu_count() or 1)
BATCH: Final = 10  # inputs a worker is sent at once
IN_FLIGHT: Final = 4 * JOBS  # batches drawn ahead of the workers
_WORKER: dict[str, Any] = {}


def _start_worker(workdir: Path, keep: Path) -> None:
    cap_address_space(MEMORY_BOUND)
    _WORKER.update(points=entry_points(), path=workdir / f"input-{os.getpid()}", keep=keep)


def _run_in_worker(cases: list[FuzzInput]) -> Figures:
    figures = Figures()
    for case in cases:
        run_one(_WORKER["path"], case, _WORKER["points"], figures, _WORKER["keep"])
    return figures


def rewriter_constants() -> Constants:
    """The constants in the source of every module of the rewriter package, in a fixed order.

    Hypothesis draws about one integer in twenty from the constants of every *local* module in
    sys.modules (``providers._get_local_constants``), so which modules earlier tests had imported,
    and the test files collected beside this one, changed the fuzz's draws. The fuzz pins that pool
    to this one: the same inputs alone, within the suite, on either pytest worker. The rewriter's own
    constants (opcodes, section types, magic numbers) are the useful ones to draw."""
    pool = Constants()
    for info in pkgutil.walk_packages(rewriter.__path__, "rewriter."):
        if not info.name.endswith(".__main__"):  # importing it runs the CLI
            pool |= constants_from_module(importlib.import_module(info.name))
    # The order of each pool decides the draws: sorted, as hypothesis keeps its own.
    return Constants(
        integers=SortedSet(pool.integers),
        floats=SortedSet(pool.floats, key=float_to_int),
        bytes=SortedSet(pool.bytes),
        strings=SortedSet(pool.strings),
    )


@pytest.fixture
def pinned_constants(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Hypothesis's pool of local constants pinned to :func:`rewriter_constants` for one test."""
    pool = rewriter_constants()
    monkeypatch.setattr(providers, "_get_local_constants", lambda: pool)
    providers.CONSTANTS_CACHE.cache.clear()  # filtered from the unpinned pool by earlier tests
    yield
    providers.CONSTANTS_CACHE.cache.clear()


@pytest.mark.slow
@pytest.mark.usefixtures("pinned_constants")
def test_fuzz_scan_audit_and_apply_never_crash_or_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seeds = load_seeds()
    figures = Figures()
    keep = tmp_path / "failing"
    keep.mkdir()
    pending: deque[Future[Figures]] = deque()
    batch: list[FuzzInput] = []
    drawn = hashlib.sha256()  # of every input and its options: names the draws in the report
    start = time.perf_counter()
    with ProcessPoolExecutor(JOBS, initializer=_start_worker, initargs=(tmp_path, keep)) as pool:

        @settings(max_examples=INPUTS, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=fuzz_inputs(seeds))
        def fuzz(case: FuzzInput) -> None:
            drawn.update(hashlib.sha256(case.data).digest() + repr(case.options).encode())
            batch.append(case)
            if len(batch) == BATCH:
                pending.append(pool.submit(_run_in_worker, batch[:]))
                batch.clear()
            if len(pending) >= IN_FLIGHT:
                figures.add(pending.popleft().result())

        fuzz()
        if batch:
            pending.append(pool.submit(_run_in_worker, batch))
        while pending:
            figures.add(pending.popleft().result())
    figures.seconds = time.perf_counter() - start
    report = figures.as_json()
    report["entry_points"] = list(ENTRY_POINTS)  # each worker built them (entry_points checks the names)
    report["seeds"] = [s.name for s in seeds]
    report["draws_sha256"] = drawn.hexdigest()
    with capsys.disabled():
        print("\nmcountrw fuzz figures: " + json.dumps(report, sort_keys=True))
        for failure in figures.exceptions[:10] + figures.hangs[:10]:
            print("  failing input: " + json.dumps(failure, sort_keys=True))
    if os.environ.get("MCOUNTRW_FUZZ_REPORT"):
        Path(os.environ["MCOUNTRW_FUZZ_REPORT"]).write_text(json.dumps(report, sort_keys=True, indent=1) + "\n")
    assert figures.inputs >= INPUTS
    assert not figures.exceptions, f"{len(figures.exceptions)} uncaught exceptions; first: {figures.exceptions[0]}"
    assert not figures.hangs, f"{len(figures.hangs)} inputs took over {TIME_BOUND} s; first: {figures.hangs[0]}"
    ran = {point: figures.accepted[point] + figures.rejected[point] for point in ENTRY_POINTS}
    assert ran == dict.fromkeys(ENTRY_POINTS, figures.inputs), ran  # the audit among them, on every input


@pytest.mark.parametrize("name", sorted(p.name for p in REGRESSIONS.iterdir() if p.suffix == ".elf"))
def test_fuzz_regressions_stay_fixed(name: str, tmp_path: Path) -> None:
    """Inputs that once crashed (see fuzz_regressions/README.md): now each entry point, with every
    target and drop_records either way, accepts or rejects them in one line."""
    figures = Figures()
    data = (REGRESSIONS / name).read_bytes()
    for target in (SiteState.NOPPED, SiteState.DISABLED, SiteState.ENABLED):
        for drop in (False, True):
            case = FuzzInput(name, data, (), Options(target, drop_records=drop, strip_signature=True))
            run_one(tmp_path / name, case, entry_points(), figures, tmp_path)
    assert not figures.exceptions and not figures.hangs, figures.exceptions or figures.hangs
    # every entry point, the audit among them, saw all six runs (accepted or rejected in one line)
    ran = {point: figures.accepted[point] + figures.rejected[point] for point in ENTRY_POINTS}
    assert ran == dict.fromkeys(ENTRY_POINTS, 6), ran


def _sleeps(path: Path, options: Options) -> None:
    time.sleep(60)


def _allocates(path: Path, options: Options) -> None:
    bytearray(2 * MEMORY_BOUND)


def _start_worker_with(workdir: Path, keep: Path, call: Callable[[Path, Options], object]) -> None:
    _start_worker(workdir, keep)
    _WORKER["points"] = [("scan", call)]


@pytest.mark.parametrize("call", [_sleeps, _allocates])
def test_a_worker_counts_a_hang_and_a_runaway_allocation(
    call: Callable[[Path, Options], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fuzz's bounds hold in its worker processes: an input that never returns is a hang, and
    one that allocates past the cap is a MemoryError (a bug), each counted and its input kept."""
    monkeypatch.setattr(sys.modules[__name__], "TIME_BOUND", 1.0)  # forked workers see it
    case = FuzzInput("x", b"input", ("by hand",), Options(SiteState.NOPPED))
    with ProcessPoolExecutor(1, initializer=_start_worker_with, initargs=(tmp_path, tmp_path, call)) as pool:
        figures = pool.submit(_run_in_worker, [case]).result()
    assert figures.inputs == 1
    if call is _sleeps:
        assert len(figures.hangs) == 1 and not figures.exceptions
    else:
        assert [e["error"].split(":")[0] for e in figures.exceptions] == ["MemoryError"] and not figures.hangs
    assert len(list(tmp_path.glob("*.elf"))) == 1
