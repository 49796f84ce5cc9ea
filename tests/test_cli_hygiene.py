"""Options and inputs that used to be accepted without a word (a user review): `--wait` without a
lock to wait for, `--mcount-addr` on an image whose generation calls no _mcount, `diff` of a
vmlinux with a module, a prenop refused for a lock leaving its empty output tree, and `undo` /
`verify` of a file that already is the original."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, assert_one_line, invoke

BIN = FIXTURES / "bin"


def _listing(root: Path) -> dict[str, str]:
    """Every path below ``root``, files by their sha256 and directories as such."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in root.rglob("*")
    }


# -- --wait: only where a lock is taken ---------------------------------------------------------


@pytest.mark.parametrize("command", ["nop", "apply", "undo"])
def test_wait_without_in_place_is_refused_and_writes_nothing(command: str, tmp_path: Path) -> None:
    f = tmp_path / "clean"
    shutil.copy2(BIN / "clean", f)
    log = tmp_path / "log"
    if command == "undo":
        assert invoke("nop", BIN / "clean", "-o", f, "--log", log).exit_code == 0
    before = _listing(tmp_path)
    args = {
        "nop": ("nop", f, "-o", tmp_path / "out"),
        "apply": ("apply", f, "--to", "nopped", "-o", tmp_path / "out"),
        "undo": ("undo", f, "--log", log, "-o", tmp_path / "out"),
    }[command]
    result = invoke(*args, "--wait")
    assert_one_line(result, 2, "error", str(f), "--wait goes with --in-place")
    assert _listing(tmp_path) == before


def test_wait_with_in_place_is_still_taken(tmp_path: Path) -> None:
    f = tmp_path / "clean"
    shutil.copy2(BIN / "clean", f)
    assert invoke("nop", f, "--in-place", "--wait").exit_code == 0


def test_prenop_verify_refuses_wait(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(BIN / "prof-le.o", tree / "m.ko")
    result = invoke("prenop", "--verify", "--wait", tree)
    assert_one_line(result, 2, "error", "--verify writes nothing and takes no lock: drop --wait")


# -- --mcount-addr: only where sites call _mcount -------------------------------------------------


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The patchable and ool fixture objects linked into executables: images whose generation the
    scan detects (a relocatable file's calls come from relocations, never from --mcount-addr)."""
    from boot import require_tool

    ld = require_tool("powerpc64le-linux-gnu-ld")
    d = tmp_path_factory.mktemp("linked")
    out = {}
    for gen in ("patchable", "ool"):
        out[gen] = d / f"{gen}-le"
        subprocess.run([ld, "-e", "0", "-o", out[gen], BIN / f"{gen}-le.o"], check=True)
    return out


@pytest.mark.parametrize("gen", ["patchable", "ool"])
@pytest.mark.parametrize("command", ["nop", "scan", "prenop"])
def test_mcount_addr_on_a_detected_patchable_or_ool_image_is_refused(
    command: str, gen: str, linked: dict[str, Path], tmp_path: Path
) -> None:
    image = tmp_path / f"{gen}-le"
    shutil.copy2(linked[gen], image)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    before = _listing(tmp_path)
    args = {
        "nop": ("nop", image, "--drop-records", "-o", tmp_path / "out"),
        "scan": ("scan", image),
        "prenop": ("prenop", "--policy", policy, "-o", tmp_path / "out", image),
    }[command]
    result = invoke(*args, "--mcount-addr", "0x10000000")
    want = f"mcountrw: error: {image}: --mcount-addr names _mcount, which only the mprofile generation calls"
    want += f" (not {gen})"
    # prenop, a run over many files, reports the file among the others: its line, then the time taken
    assert result.exit_code == 2 and result.stderr.splitlines()[0] == want, result.output
    assert "Traceback" not in result.output
    assert _listing(tmp_path) == before


@pytest.mark.parametrize("command", ["nop", "apply"])
@pytest.mark.parametrize("name", ["prof-le.o", "patchable-le.o", "ool-be.o"])
def test_mcount_addr_for_one_relocatable_file_rewritten_alone_is_refused(
    command: str, name: str, tmp_path: Path
) -> None:
    """A module's or object's calls come from its relocations, in every generation: with one such
    file named, --mcount-addr has nothing to mean and used to be ignored without a word."""
    image = tmp_path / name
    shutil.copy2(BIN / name, image)
    before = _listing(tmp_path)
    target = ("--to", "disabled") if command == "apply" else ()
    result = invoke(command, image, *target, "--drop-records", "-o", tmp_path / "out", "--mcount-addr", "0x10")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"mcountrw: error: {image}: --mcount-addr has no meaning for a module or object: its calls to _mcount "
        "are found by their relocations (the option is for a stripped vmlinux)"
    ]
    assert _listing(tmp_path) == before


# -- diff: a module compares with a module, not with a vmlinux -------------------------------------


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``prof-le.o`` made a module (a ``.modinfo`` section) and ``prof-le`` a vmlinux (a
    ``__ksymtab`` section): what ``Image.kind`` goes by, on fixtures small enough to diff at once."""
    from boot import require_tool

    objcopy = require_tool("powerpc64le-linux-gnu-objcopy")
    d = tmp_path_factory.mktemp("kinds")
    (d / "modinfo").write_bytes(b"license=GPL\0")
    (d / "ksymtab").write_bytes(bytes(8))
    module, vmlinux = d / "m.ko", d / "vmlinux"
    subprocess.run([objcopy, "--add-section", f".modinfo={d / 'modinfo'}", BIN / "prof-le.o", module], check=True)
    subprocess.run([objcopy, "--add-section", f"__ksymtab={d / 'ksymtab'}", BIN / "prof-le", vmlinux], check=True)
    return {"module": module, "vmlinux": vmlinux, "object": BIN / "prof-le.o", "executable": BIN / "prof-le"}


@pytest.mark.parametrize(("a", "b"), [("vmlinux", "module"), ("module", "vmlinux"), ("module", "executable")])
def test_diff_of_a_module_with_a_linked_image_is_refused_naming_both(
    a: str, b: str, kinds: dict[str, Path], tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    result = invoke("diff", kinds[a], kinds[b], "-o", report)
    linked = b if a == "module" else a
    assert_one_line(
        result, 2, "error", f"{kinds[a]} ({a}) and {kinds[b]} ({b})", f"not with a linked {linked}", "two modules"
    )
    assert not report.exists()


@pytest.mark.parametrize(
    ("a", "b"), [("vmlinux", "vmlinux"), ("module", "module"), ("module", "object"), ("object", "executable")]
)
def test_diff_of_images_of_one_kind_or_a_module_and_its_object_still_compares(
    a: str, b: str, kinds: dict[str, Path]
) -> None:
    result = invoke("diff", kinds[a], kinds[b], "--format", "json")
    assert result.exit_code in (0, 1) and result.stderr == "", result.output


def test_diff_paths_refuses_a_file_and_a_tree(tmp_path: Path) -> None:
    from rewriter.diff import diff_paths
    from rewriter.errors import ArgumentError

    clean = BIN / "clean"
    with pytest.raises(ArgumentError, match="compare two files or two directories, not one of each"):
        diff_paths(clean, tmp_path, [clean], [])


# -- prenop refused for a lock: no output tree left behind ----------------------------------------


@pytest.mark.parametrize("out", ["OUT", "new/parents/OUT"])
def test_prenop_refused_for_a_held_log_dir_lock_leaves_no_output_tree(out: str, tmp_path: Path) -> None:
    from rewriter.lock import hold

    tree, logs = tmp_path / "tree", tmp_path / "logs"
    tree.mkdir()
    logs.mkdir()
    shutil.copy2(BIN / "prof-le.o", tree / "m.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    before = _listing(tmp_path)
    with hold([logs]):  # another run, as far as the lock can tell (another open file description)
        result = invoke("prenop", "--policy", policy, "-o", tmp_path / out, "--log-dir", logs, tree)
    assert_one_line(result, 2, "error", f"{logs}: locked by pid", "pass --wait")
    assert _listing(tmp_path) == before


def test_prenop_refused_for_a_lock_keeps_an_output_tree_that_was_there(tmp_path: Path) -> None:
    from rewriter.lock import hold

    tree, logs, out = tmp_path / "tree", tmp_path / "logs", tmp_path / "OUT"
    for d in (tree, logs, out):
        d.mkdir()
    shutil.copy2(BIN / "prof-le.o", tree / "m.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    with hold([logs]):
        assert invoke("prenop", "--policy", policy, "-o", out, "--log-dir", logs, tree).exit_code == 2
    assert out.is_dir()


# -- undo and verify of a file that already is the original ---------------------------------------


@pytest.fixture
def undone(tmp_path: Path) -> tuple[Path, Path]:
    """``clean`` nopped to ``out`` with its log, then undone to ``orig``: (orig, the log)."""
    out, log, orig = tmp_path / "out", tmp_path / "log", tmp_path / "orig"
    assert invoke("nop", BIN / "clean", "-o", out, "--log", log).exit_code == 0
    assert invoke("undo", out, "--log", log, "-o", orig).exit_code == 0
    return orig, log


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_undo_of_a_file_already_undone_says_so_and_copies_it(undone: tuple[Path, Path], tmp_path: Path) -> None:
    orig, log = undone
    again = tmp_path / "again"
    result = invoke("undo", orig, "--log", log, "-o", again)
    assert result.exit_code == 0, result.output  # a rerun: the output is what undo gives
    line = result.stderr.strip()
    assert line == (
        f"{orig}: nothing to undo: it already is the original (the input of {log}, sha256 {_sha(orig)[:16]}...); "
        f"wrote {again} (a copy of it)"
    )
    assert _sha(again) == _sha(orig) == _sha(BIN / "clean")


def test_undo_in_place_of_a_file_already_undone_writes_nothing(undone: tuple[Path, Path], tmp_path: Path) -> None:
    orig, log = undone
    before = _listing(tmp_path)
    result = invoke("undo", orig, "--log", log, "--in-place")
    assert result.exit_code == 0 and result.stderr.strip().endswith("; nothing written"), result.output
    assert "nothing to undo: it already is the original" in result.stderr
    assert _listing(tmp_path) == before


def test_verify_of_a_file_already_undone_says_it_is_the_original(undone: tuple[Path, Path]) -> None:
    orig, log = undone
    result = invoke("verify", BIN / "clean", orig, "--log", log)
    assert result.exit_code == 1  # verify's contract: 0 only for the log's output
    assert result.stdout.startswith(f"already original: {orig} already is the original (the input of {log}")
    assert "MISMATCH" not in result.output and "another file" not in result.output


def test_prenop_verify_of_an_undone_tree_says_already_original(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(BIN / "prof-le.o", tree / "m.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    assert invoke("prenop", "--policy", policy, "--in-place", tree).exit_code == 0
    assert invoke("prenop", "--undo", "--in-place", tree).exit_code == 0  # keeps the logs
    result = invoke("prenop", "--verify", tree)
    assert result.exit_code == 1, result.output
    assert f"already original: m.ko: {tree / 'm.ko'} already is the original" in result.stderr
    assert "MISMATCH" not in result.output
    assert "  already original      1             0" in result.stdout


# -- a directory with nothing to read ------------------------------------------------------------


@pytest.mark.parametrize("command", ["scan", "audit", "diff", "policy check"])
def test_a_named_directory_with_nothing_to_read_is_one_line_and_no_report(command: str, tmp_path: Path) -> None:
    """scan and audit used to exit 2 printing nothing at all, diff printed an empty report, and
    policy check counted "0 files ()" and exited 1."""
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "README").write_text("not an ELF\n")
    report = tmp_path / "report"
    args: tuple[object, ...] = {
        "scan": ("scan", empty, "-o", report),
        "audit": ("audit", empty, "-o", report),
        "diff": ("diff", empty, empty, "-o", report),
        "policy check": ("policy", "check", ROOT / "examples" / "keep-core.policy", empty),
    }[command]
    result = invoke(*args)
    want = _nothing_below(command, empty)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"mcountrw: error: {want}"]
    assert not result.stdout and not report.exists()


NOTHING_BELOW = (
    "no module below it: a directory contributes its modules (.ko, .ko.xz, .ko.gz, .ko.zst); name a vmlinux as a file"
)


def _nothing_below(command: str, directory: Path) -> str:
    """The line for a named directory with nothing to read: policy check says it as prenop does."""
    if command == "policy check":
        return f"{directory}: {NOTHING_BELOW}"
    return f"{directory}: no PowerPC64 ELF file or module below it"


@pytest.mark.parametrize("command", ["scan", "audit", "policy check"])
def test_a_named_directory_with_nothing_to_read_beside_a_file_is_one_line_and_the_file_is_read(
    command: str, tmp_path: Path
) -> None:
    """policy check dropped the empty directory in silence and reported on the file alone (exit 0
    or 1); scan and audit said it in one line, read the file and exited 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    image = tmp_path / "prog"
    shutil.copy2(BIN / "clean", image)
    args: tuple[object, ...] = {
        "scan": ("scan", empty, image),
        "audit": ("audit", empty, image),
        "policy check": ("policy", "check", ROOT / "examples" / "keep-core.policy", empty, image),
    }[command]
    result = invoke(*args)
    want = _nothing_below(command, empty)
    assert result.exit_code == 2, result.output
    assert [line for line in result.stderr.splitlines() if "error" in line] == [f"mcountrw: error: {want}"]
    assert result.stdout  # the file is still read and reported


def test_policy_check_of_a_missing_path_beside_a_file_checks_the_file(tmp_path: Path) -> None:
    """As scan and audit: one line for the path, the others checked, exit 2 (it stopped the whole
    run with that line and checked nothing)."""
    image = tmp_path / "prog"
    shutil.copy2(BIN / "clean", image)
    missing = tmp_path / "nosuch"
    for command in (("scan",), ("audit",), ("policy", "check", ROOT / "examples" / "keep-core.policy")):
        result = invoke(*command, missing, image)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [f"mcountrw: error: {missing}: No such file or directory"], command
        assert result.stdout, command  # the file is read and reported


def test_prenop_refuses_a_named_directory_with_nothing_to_read_beside_a_file(tmp_path: Path) -> None:
    """prenop dropped it in silence and rewrote the file, exit 0; it refuses a missing path among
    others before anything is written, and now an empty directory the same way."""
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    image = tmp_path / "prog"
    shutil.copy2(BIN / "clean", image)
    before = image.read_bytes()
    for mode in (("--dry-run",), ("-o", out), ("--in-place",)):
        result = invoke("prenop", "--policy", ROOT / "examples" / "keep-core.policy", *mode, empty, image)
        assert result.exit_code == 2, result.output
        assert result.stderr.splitlines() == [f"mcountrw: error: {empty}: {NOTHING_BELOW}"]
        assert not out.exists() and image.read_bytes() == before and not result.stdout


# -- an in-place rewrite never replaces a log that is not the file's -----------------------------


def test_in_place_rewrite_refuses_to_replace_a_log_beside_the_file_that_is_not_its_own(tmp_path: Path) -> None:
    """A log beside the file that describes another file is ignored with a warning; an in-place
    rewrite used to overwrite it then, keeping no copy. A chain's own log is archived as before."""
    z = tmp_path / "z.o"
    shutil.copy2(BIN / "prof-le.o", z)
    other = tmp_path / "other.o"
    assert invoke("nop", z, "-o", other, "--drop-records", "--only", "leaf_add").exit_code == 0
    foreign = tmp_path / "z.o.mcountrw.jsonl"
    shutil.copy2(tmp_path / "other.o.mcountrw.jsonl", foreign)
    before = _listing(tmp_path)
    result = invoke("nop", z, "--in-place", "--drop-records", "--only", "sum8")
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"mcountrw: error: {foreign}: not the log of {z}, and an in-place rewrite would replace it: move it "
        "away, or give the new log another name with --log"
    ]
    assert _listing(tmp_path) == before
    foreign.unlink()
    assert invoke("nop", z, "--in-place", "--drop-records", "--only", "sum8").exit_code == 0
    result = invoke("nop", z, "--in-place", "--drop-records", "--only", "fp_mix")
    assert result.exit_code == 0 and len(list(tmp_path.glob("z.o.mcountrw.*.jsonl"))) == 1, result.output


def test_a_rerun_names_the_state_the_target_is_for_the_image_sites(tmp_path: Path) -> None:
    """nopped is no state of an ool site: "already nopped" contradicted scan (disabled) and plan."""
    result = invoke("nop", BIN / "ool-le.o", "-o", tmp_path / "k.o", "--keep-records")
    assert result.exit_code == 0
    assert "nothing to change: all 6 selected sites are already disabled (nop); wrote" in result.stderr
    result = invoke("nop", BIN / "patchable-le.o", "-o", tmp_path / "p.o", "--keep-records")
    assert "nothing to change: all 6 selected sites are already nopped (nop; nop); wrote" in result.stderr


@pytest.mark.parametrize(("name", "gen"), [("patchable-le.o", "patchable"), ("ool-be.o", "ool")])
def test_nop_of_an_object_built_as_nops_without_drop_records_is_refused(name: str, gen: str, tmp_path: Path) -> None:
    """An object's records become its kernel's once linked in, and keep its `nop` sites traceable:
    "nothing to change: already nopped", exit 0 and a copy, read as pre-nopped when nothing was
    (a vmlinux or module was refused so already)."""
    out = tmp_path / "p.o"
    result = invoke("nop", BIN / name, "-o", out)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith(f"mcountrw: error: {BIN / name}: {gen}: the 6 selected sites already are nop")
    assert "(the kernel patches them once linked in)" in result.stderr and "add --drop-records" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("gen", "start"), [("patchable", "nopped"), ("ool", "disabled")])
def test_plan_offline_offers_no_enable_of_a_site_built_as_nops(gen: str, start: str) -> None:
    """apply refuses to write a patchable or ool enable into a file (the running kernel enables
    those sites); `plan --offline` printed a 2-stage plan for it, exit 0. Disabling stays plannable."""
    result = invoke("plan", "--generation", gen, "--from", start, "--to", "enabled", "--offline")
    assert result.exit_code == 1 and result.stderr == (
        f"mcountrw: no legal route: site 0: {gen} {start} -> enabled: no offline route: a site built as nops calls the "
        "tracer only when the running kernel enables it (its boot-time init accepts only the nops at a recorded "
        "place; docs/rewrite.md)\n"
    ), result.output
    assert invoke("plan", "--generation", gen, "--from", "enabled", "--to", start, "--offline").exit_code == 0
    assert invoke("plan", "--generation", gen, "--from", start, "--to", "enabled").exit_code == 0  # at run time


def test_plan_refuses_unknown_as_bad_input() -> None:
    """`unknown` is a choice of --from/--to (a scan's state) that no plan can take: it exited 1,
    "no legal route", as if the states were fine and the ISA forbade the move."""
    for args in (("--from", "unknown", "--to", "enabled"), ("--from", "enabled", "--to", "unknown")):
        result = invoke("plan", *args)
        assert result.exit_code == 2 and result.stderr == (
            f"mcountrw: error: {args[0] if args[1] == 'unknown' else args[2]} unknown: a site whose words are none "
            "of its states cannot be planned\n"
        ), result.output


def test_check_plan_list_is_given_alone_and_a_bare_check_plan_points_at_it(tmp_path: Path) -> None:
    """`check-plan --list --builtin disable` listed and ignored --builtin; a bare check-plan did not
    say how to see the built-in plans."""
    result = invoke("check-plan", "--list", "--builtin", "disable")
    assert result.exit_code == 2 and not result.stdout, result.output
    assert result.stderr == "mcountrw: error: --list lists the built-in plans; give it alone, not with --builtin\n"
    bare = invoke("check-plan")
    assert bare.exit_code == 2 and bare.stderr == (
        "mcountrw: error: give exactly one of PLAN.json or --builtin NAME (--list lists the built-in plans)\n"
    ), bare.output
    assert invoke("check-plan", "--list").exit_code == 0


@pytest.mark.parametrize("command", ["scan", "audit", "policy"])
def test_mcount_addr_over_modules_and_objects_alone_is_refused(command: str) -> None:
    """It names a stripped vmlinux's _mcount: a run of relocatable files only ignored it in silence,
    exit 0, as if it had mattered (a rewrite of one refused it already). Beside a linked image it
    serves that image, and the run goes on."""
    head = ("policy", "check", str(ROOT / "examples" / "keep-core.policy")) if command == "policy" else (command,)
    result = invoke(*head, BIN / "prof-le.o", BIN / "patchable-le.o", "--mcount-addr", "0x10")
    assert result.exit_code == 2 and result.stderr == (
        "mcountrw: error: --mcount-addr: every file given is a module or object, which find their calls to _mcount "
        "by their relocations (the option is for a stripped vmlinux)\n"
    ), result.output
    from test_stripped import mcount_of

    beside = invoke(*head, BIN / "prof-le.o", BIN / "prof-le", "--mcount-addr", hex(mcount_of(BIN / "prof-le")))
    assert beside.exit_code in (0, 1) and "--mcount-addr" not in beside.stderr, beside.output


def test_a_backup_of_a_later_step_is_not_called_the_original(tmp_path: Path) -> None:
    """--in-place --backup of a file an earlier step rewrote keeps that step's output, and said
    "the original kept as F.orig"."""
    src = tmp_path / "p"
    src.write_bytes((BIN / "prof-le").read_bytes())
    first = invoke("nop", src, "--in-place", "--backup", "--only", "leaf_add")
    assert f"wrote {src} and {src}.mcountrw.jsonl, the original kept as {src}.orig" in first.stderr, first.output
    (tmp_path / "p.orig").unlink()
    second = invoke("nop", src, "--in-place", "--backup", "--only", "sum8")
    assert f", the file as it was before this step kept as {src}.orig" in second.stderr, second.output


def test_plan_refuses_a_route_for_one_word_sites() -> None:
    """--route used to be ignored for ool (the plan printed "route none")."""
    result = invoke("plan", "--generation", "ool", "--from", "enabled", "--to", "disabled", "--route", "b8")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "mcountrw: error: --route b8: ool sites are one word; there is no route to choose"
    ]
    ok = invoke("plan", "--generation", "patchable", "--from", "nopped", "--to", "enabled", "--route", "b8")
    assert ok.exit_code == 0 and ok.stdout.startswith("plan: 1 site, route b8")


def test_addr_naming_a_patchable_record_says_which_site_it_meant(linked: dict[str, Path], tmp_path: Path) -> None:
    """A patchable record is the first nop, 4 bytes before the call slot that --addr names: the
    value scan's JSON prints as `record`. The nothing-to-do line now says which site it is."""
    obj = BIN / "patchable-le.o"
    result = invoke("nop", obj, "--drop-records", "--dry-run", "--addr", ".text+0x0")
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "--addr .text+0x0: matches none of its 6 sites; .text+0x0 is the record of the site at .text+0x4 "
        "(--addr names the call slot)"
    )
    image = linked["patchable"]
    site = json.loads(invoke("scan", "--format", "json", image).stdout)["images"][0]["sites"][0]
    record, slot = site["record"], site["address"]
    assert record == slot - 4
    result = invoke("nop", image, "--drop-records", "--dry-run", "--addr", hex(record))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f"is the record of the site at {slot:#x} (--addr names the call slot)"), (
        result.stderr
    )


def test_verify_against_a_chain_s_first_original_says_the_log_is_one_step(tmp_path: Path) -> None:
    """The newest log of a chain was made from the previous step's output: verifying the first
    original against the newest file said only "not the file this log was made from"."""
    u = tmp_path / "u.o"
    shutil.copy2(BIN / "prof-le.o", u)
    step1, step2 = tmp_path / "u.nop.o", tmp_path / "u.en.o"
    assert invoke("nop", u, "-o", step1, "--drop-records", "--only", "leaf_add").exit_code == 0
    assert invoke("apply", step1, "--to", "enabled", "-o", step2).exit_code == 0
    log = tmp_path / "u.en.o.mcountrw.jsonl"
    result = invoke("verify", u, step2, "--log", log)
    assert result.exit_code == 1
    assert (
        f"MISMATCH: {u} is not the file this log was made from (sha256 differs); this log is one step of a "
        f"chain: it was made from {step1}, the output of its base log {step1}.mcountrw.jsonl (verify each step "
        "against its own input)"
    ) in result.output
    assert invoke("verify", step1, step2, "--log", log).exit_code == 0


def _machine(src: Path, dst: Path, machine: int | None = None, elf_class: int | None = None) -> Path:
    """A copy of ``src`` claiming another ``e_machine`` (or ELF class) in its header."""
    data = bytearray(src.read_bytes())
    order = "little" if data[5] == 1 else "big"
    if machine is not None:
        data[18:20] = machine.to_bytes(2, order)
    if elf_class is not None:
        data[4] = elf_class
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("command", ["scan", "audit"])
def test_a_tree_walk_passes_over_elf_files_for_other_machines(command: str, tmp_path: Path) -> None:
    """A kernel build tree holds host tools (x86-64 `scripts/basic/fixdep`, `scripts/mod/*.o`) and
    32-bit vDSO objects beside its PowerPC64 files: scan and audit of the tree failed on each one
    (`machine 62 is not PowerPC64`, exit 2). Named on its own, such a file is still refused."""
    tree = tmp_path / "build"
    (tree / "scripts" / "basic").mkdir(parents=True)
    (tree / "arch").mkdir()
    shutil.copy2(BIN / "prof-le", tree / "arch" / "prog")
    host = _machine(BIN / "prof-le", tree / "scripts" / "basic" / "fixdep", machine=62)
    _machine(BIN / "prof-le", tree / "scripts" / "modpost.o", machine=62)
    _machine(BIN / "prof-le", tree / "arch" / "vdso-32.o", machine=20, elf_class=1)  # EM_PPC, ELFCLASS32
    walked = invoke(command, tree, "--format", "json")
    assert walked.exit_code in (0, 1) and not walked.stderr, walked.output
    names = sorted(Path(i["path"]).name for i in json.loads(walked.stdout)["images"])
    assert names == ["prog"]
    named = invoke(command, host)
    assert named.exit_code == 2 and "machine 62 is not PowerPC64" in named.stderr


def test_a_tree_of_only_other_machines_elf_files_is_nothing_to_read(tmp_path: Path) -> None:
    tree = tmp_path / "host"
    tree.mkdir()
    _machine(BIN / "prof-le", tree / "fixdep", machine=62)
    result = invoke("scan", tree)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"mcountrw: error: {tree}: no PowerPC64 ELF file or module below it"]


@pytest.mark.parametrize(
    "args",
    [
        ("scan", "--log-dir", "", BIN / "prof-le"),
        ("audit", "--log-dir", "", BIN / "prof-le"),
        ("diff", "--log-dir", "", BIN / "prof-le", BIN / "prof-le"),
        ("prenop", "--undo", "--in-place", "--log-dir", "", BIN / "prof-le"),
        ("prenop", "--verify", "--log-dir", "", BIN / "prof-le"),
    ],
    ids=lambda a: "-".join(str(x) for x in a[:2]),
)
def test_an_empty_log_dir_is_refused_not_read_as_the_current_directory(args: tuple[object, ...]) -> None:
    """`--log-dir "$MCOUNTRW_LOG_DIR"` with the variable unset was read as `.`: an undo found no log
    there for the modules, undid the files whose logs happened to be beside them, and exited 0."""
    result = invoke(*args)
    assert result.exit_code == 2 and not result.stdout, result.output
    assert result.stderr.splitlines() == ["mcountrw: error: --log-dir: an empty path (an unset variable?); "
                                          "for the current directory, write ."]  # fmt: skip


@pytest.mark.parametrize(("byte", "value", "error"), [(5, 2, "machine 5376 is not PowerPC64"), (4, 1, "ELF class 1")])
def test_a_tree_walk_still_reports_a_damaged_powerpc64_file(byte: int, value: int, error: str, tmp_path: Path) -> None:
    """A PowerPC64 file whose byte-order or class byte is damaged reads as another machine's or as
    ELF32: the walk must not pass over it as a host tool, or it vanishes from the tree's report."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(BIN / "clean", tree / "clean")
    data = bytearray((BIN / "prof-le").read_bytes())
    data[byte] = value
    (tree / "prof-le").write_bytes(bytes(data))
    result = invoke("scan", tree)
    assert result.exit_code == 2 and error in result.stderr, result.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("check-plan", "--list", "--tasks", "3"), "--list lists the built-in plans; give it alone, not with --tasks"),
        (
            ("check-plan", "--list", "--cmodx", "3.0", "--no-stale-fetch"),
            "give it alone, not with --cmodx, --stale-fetch/--no-stale-fetch",
        ),
        (
            ("plan", "--from", "nopped", "--to", "enabled", "--offline", "--cmodx", "3.0"),
            "--cmodx is about CPUs running the code: an --offline plan has none",
        ),
    ],
    ids=["list-tasks", "list-cmodx", "plan-offline-cmodx"],
)
def test_options_a_command_would_ignore_are_refused(args: tuple[str, ...], words: str) -> None:
    """Each was accepted, exit 0, and ignored: --list listed, an offline plan printed as if it
    answered the ISA rules asked for."""
    assert_one_line(invoke(*args), 2, "error", words)


def test_drop_records_with_to_enabled_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """No generation's enabled call slot is a nop, so there was nothing to drop: the run wrote a copy
    and a log saying drop_records, exit 0."""
    refused = invoke("apply", BIN / "prof-le", "--to", "enabled", "--drop-records", "-o", tmp_path / "out")
    assert_one_line(refused, 2, "error", "--drop-records drops the records of sites whose call slot ends up nop")
    assert list(tmp_path.iterdir()) == []
    assert invoke("plan", "--from", "nopped", "--to", "enabled", "--offline").exit_code == 0  # without it: planned
