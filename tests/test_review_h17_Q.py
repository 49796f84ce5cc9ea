"""Policy patterns select what the same pattern written to set_ftrace_filter selects.

The kernel's matching (kernel/trace/ftrace.c: match_records(), ftrace_match_record();
trace_events_filter.c: filter_parse_regex(); lib/glob.c: glob_match()) differed from
rewriter/policy.py's in four ways, each shown by qemu below (7.2 and 6.12 alike):

* ``:mod:!NAME`` selects the core kernel's functions too (they are in no module, so no exclusion
  fails them); the policy said it never does.
* ``:mod:`` and ``:mod:!`` are "blank module globbing": every module, and the core kernel alone;
  the policy refused both.
* ``\\`` escapes the next character in the kernel's globs; fnmatch took it literally.
* A FUNCTION starting with ``!`` removes functions from the filter, and a FUNCTION or MODULE
  starting with a digit is a record's index (``*:mod:6lowpan`` fails: EINVAL): neither selects by
  name, and the policy took both as globs. They are refused now, with the way to write them.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest
from boot import QEMU, boot, make_initramfs, module_load_script, require_kernel, require_tool, unsigned_module
from conftest import invoke

from rewriter.batch import scan_one
from rewriter.boot import boot_of, init_only, untraceable
from rewriter.policy import PolicyError, Verb, parse, parse_pattern
from rewriter.sites import Scan

# (file below kernel/, its module name): '-' in a file name is '_' in the module's.
MODULES = (
    ("fs/nls/nls_utf8.ko*", "nls_utf8"),
    ("fs/nls/nls_ascii.ko*", "nls_ascii"),
    ("fs/nls/mac-roman.ko*", "mac_roman"),
    ("net/6lowpan/6lowpan.ko*", "6lowpan"),
)

# Patterns both sides read; the kernel's selection is compared with the policy's.
SAME = (
    "pnv_eeh_dbgfs_get_inb?",  # '?'
    "pnv_eeh_dbgfs_get_inb[AB]",  # a class
    "[!p]nv_eeh_dbgfs_get_inbA",  # a complemented class: nothing
    "[^p]nv_eeh_dbgfs_get_inbA",  # '^' is no complement in glob_match(): a member
    "pnv_eeh_dbgfs_get_inb[A",  # an unclosed '[' is itself: nothing
    "pnv_eeh_dbgfs_*_inbB_open",  # '*' in the middle (MATCH_GLOB)
    "\\p\\n\\v_eeh_dbgfs_get_inbA",  # '\' escapes
    "*.isra.0",  # gcc clones keep their suffix
    "mce_find_instr_ea_and_phys",  # ...so the plain name is not the clone
    "PSERIES_LOG_ERROR",  # case counts: nothing
    "char2uni",  # the core kernel's and each nls module's
    "init_nls_utf8",  # a module's init function
    "*:mod:nls_*",
    "*:mod:[n]ls_utf8",
    ":mod:nls-utf8",  # the module's name is nls_utf8: nothing
    "*:mod:mac-roman",  # nothing either
    "*:mod:mac_roman",
    "*:mod:NLS_UTF8",
    "*:mod:[6]lowpan",
    "*:mod:!nls_utf8",  # the core kernel too
    ":mod:",  # every module
    ":mod:!",  # the core kernel alone
)
# Patterns ftrace does not read as names: the policy refuses them (the kernel's selection shows why).
REFUSED = ("!char2uni", "*:mod:6lowpan", "*:mod:!6lowpan")


class Selection(NamedTuple):
    """What one pattern selects: records per module ("" the core kernel), and the records' labels
    (``name [module]``, as set_ftrace_filter lists them) when there are few."""

    per_module: Counter[str]
    labels: Counter[str] | None


Booted = tuple[dict[str, Selection], list[Scan]]  # per pattern, the kernel's selection; the files' scans


def _script(patterns: tuple[str, ...]) -> str:
    """Shell writing each pattern to set_ftrace_filter between markers: every selected line when
    there are few, else counts per module (40k lines take too long on the console)."""
    out = []
    for i, p in enumerate(patterns):
        out.append(f"""echo {shlex.quote(p)} > $T/set_ftrace_filter
echo "Q-BEGIN {i}"
n=$(wc -l < $T/set_ftrace_filter)
if [ $n -le 60 ]; then cat $T/set_ftrace_filter; else
echo "Q-CORE $(grep -vc ' \\[' $T/set_ftrace_filter)"; grep -o '\\[.*\\]' $T/set_ftrace_filter | sort | uniq -c; fi
echo "Q-END {i}"
echo > $T/set_ftrace_filter""")
    return "\n".join(out)


def _kernel_selection(lines: list[str]) -> Selection:
    per_module: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    small = True
    for line in lines:
        if line.startswith("#### all functions enabled") or ":mod:" in line:
            continue  # no record selected (a :mod: of no loaded module is kept for a later load)
        if m := re.fullmatch(r"Q-CORE (\d+)", line):
            per_module[""] += int(m[1])
            small = False
        elif m := re.fullmatch(r"\s*(\d+) \[(\S+)\]", line):
            per_module[m[2]] += int(m[1])
        else:
            labels[line] += 1
            module = re.search(r" \[(\S+)\]$", line)
            per_module[module[1] if module else ""] += 1
    return Selection(per_module, labels if small else None)


def _between(console: str, i: int) -> list[str]:
    lines = console.splitlines()
    begin, end = lines.index(f"Q-BEGIN {i}"), lines.index(f"Q-END {i}")
    return [line for line in lines[begin + 1 : end] if not re.match(r"^\[\s*\d+\.\d+\]", line)]


def _policy_selection(pattern: str, scans: list[Scan]) -> Selection:
    """The sites a rule of ``pattern`` matches that the kernel still lists after the boot and the
    loads: a vmlinux's init sections are freed by then (boot.init_only), and an untraceable site
    has no record the filter could select."""
    pat = parse_pattern(pattern)
    per_module: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    for sc in scans:
        if not pat.matches_file(sc.module):
            continue
        facts = boot_of(sc)
        for s in sc.sites:
            name = sc.name_of(s) or ""
            if untraceable(s, facts) is not None or (sc.module is None and init_only(s.section)):
                continue
            if pat.matches_site(name, s.section):
                per_module[sc.module or ""] += 1
                labels[name if sc.module is None else f"{name} [{sc.module}]"] += 1
    return Selection(per_module, labels)


@pytest.fixture(scope="module", params=["7.2", "6.12"])
def ftrace_selects(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Booted:
    """One boot per kernel: the four modules loaded, then every pattern of SAME and REFUSED."""
    files = require_kernel(request.param)
    require_tool(QEMU)
    tmp = tmp_path_factory.mktemp(f"q{request.param}")
    mods = [unsigned_module(request.param, glob, tmp / f"{Path(glob).name.split('.')[0]}.ko") for glob, _ in MODULES]
    patterns = SAME + REFUSED
    script = module_load_script([m.stem for m in mods], _script(patterns), aff_grep="MCOUNTRW-NONE")
    initrd = make_initramfs(tmp / "i.cpio", files.busybox, mods, script)
    booted = boot(files.vmlinux, "console=hvc0 panic=-1", initrd, 240)
    assert booted.done and set(booted.insmod.values()) == {0}, booted.console[-3000:]
    kernel = {p: _kernel_selection(_between(booted.console, i)) for i, p in enumerate(patterns)}
    scans = [sc for f in (files.vmlinux, *mods) if (sc := scan_one(f).scan) is not None]
    assert [sc.module for sc in scans] == [None, *(name for _, name in MODULES)]
    return kernel, scans


@pytest.mark.boot
@pytest.mark.parametrize("pattern", SAME)
def test_a_pattern_selects_what_set_ftrace_filter_selects(pattern: str, ftrace_selects: Booted) -> None:
    kernel, scans = ftrace_selects
    ours = _policy_selection(pattern, scans)
    theirs = kernel[pattern]
    assert ours.per_module == theirs.per_module
    if theirs.labels is not None:
        assert ours.labels == theirs.labels


@pytest.mark.boot
def test_policy_check_counts_in_the_modules_what_set_ftrace_filter_selects_there(
    ftrace_selects: Booted, tmp_path: Path
) -> None:
    """The command's path to the same answer: one policy of a `keep` rule per pattern, checked over
    the four modules (their every site is listed once loaded, init functions included)."""
    kernel, scans = ftrace_selects
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n" + "".join(f"keep {p}\n" for p in SAME))
    check = invoke("policy", "check", policy, *(sc.path for sc in scans[1:]))
    assert check.exit_code in (0, 1), check.output  # 1: the rules that match nothing are warned of
    for line, pattern in enumerate(SAME, start=2):
        row = re.search(rf"^\s+{line}\s+keep\s+\S+\s+(\d+)\s", check.stdout, re.MULTILINE)
        assert row is not None, check.stdout
        in_modules = sum(n for module, n in kernel[pattern].per_module.items() if module)
        assert (pattern, int(row[1])) == (pattern, in_modules)


@pytest.mark.boot
def test_what_the_policy_refuses_ftrace_does_not_select_by_name(ftrace_selects: Booted) -> None:
    kernel, _ = ftrace_selects
    assert kernel["!char2uni"].per_module == Counter()  # it removes; from an empty filter, nothing
    assert kernel["*:mod:6lowpan"].per_module == Counter()  # 6lowpan is loaded: 25 records
    assert kernel["*:mod:!6lowpan"].per_module["6lowpan"] == 25  # the exclusion excludes nothing
    assert kernel["*:mod:[6]lowpan"].per_module == Counter({"6lowpan": 25})
    for pattern in REFUSED:
        with pytest.raises(PolicyError):
            parse_pattern(pattern)


# -- without qemu ---------------------------------------------------------------------------------


def test_module_exclusion_selects_the_core_kernel_too() -> None:
    fp = parse("default keep\nnop trace_*:mod:!ext4\n")
    assert fp.for_file(None).decide("trace_x", ".text")[0] is Verb.NOP
    assert fp.for_file("jbd2").decide("trace_x", ".text")[0] is Verb.NOP
    assert fp.for_file("ext4").decide("trace_x", ".text")[0] is Verb.KEEP


def test_a_blank_module_is_every_module_and_a_blank_exclusion_the_core_kernel() -> None:
    every = parse("default keep\nnop :mod:\n")
    core = parse("default keep\nnop :mod:!\n")
    assert [every.for_file(m).decide("f", ".text")[0] for m in (None, "ext4")] == [Verb.KEEP, Verb.NOP]
    assert [core.for_file(m).decide("f", ".text")[0] for m in (None, "ext4")] == [Verb.NOP, Verb.KEEP]


def test_a_backslash_escapes_the_next_character_as_in_the_kernels_glob() -> None:
    fp = parse("default keep\nnop \\v\\f\\s_read\nnop x\\*\n").for_file(None)
    assert fp.decide("vfs_read", ".text")[0] is Verb.NOP
    assert fp.decide("xy", ".text")[0] is Verb.KEEP  # `\*` is a star, not a wildcard
    assert fp.decide("x*", ".text")[0] is Verb.NOP


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("nop !vfs_read", "removes functions from ftrace's filter"),
        ("nop 9p_*", "as a record's index"),
        ("nop :mod:6lowpan", "write `[6]lowpan`"),
        ("keep *:mod:!8021q", "write `[8]021q`"),
    ],
)
def test_a_pattern_ftrace_does_not_read_as_a_name_is_refused_in_one_line(rule: str, says: str, tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text(f"default keep\n{rule}\n")
    obj = Path(__file__).parent.parent / "fixtures" / "bin" / "prof-le.o"
    run = invoke("policy", "check", policy, obj)
    assert run.exit_code == 2, run.output
    assert says in run.output and f"{policy}:2: `{rule.split()[1]}`" in run.output, run.output
    assert "Traceback" not in run.output and len(run.output.strip().splitlines()) == 1, run.output
