"""Rewriting the fixtures, proven by running them: every state and every stage image of every
plan runs under qemu-user with the same results, and `_mcount` is hit by exactly the sites that
read `enabled` — the words on disk decide, not the log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from boot import require_tool
from conftest import FIXTURES, unwrapped

from rewriter.elf.image import Image
from rewriter.errors import NoRoute, PlanRejected
from rewriter.files import apply_file, undo_file, verify_files
from rewriter.plan import Route
from rewriter.rewrite import Options, Selection
from rewriter.sites import scan
from rewriter.states import SiteState

RUNNABLE = {"prof-le": "qemu-ppc64le-static", "prof-be": "qemu-ppc64-static", "std-le": "qemu-ppc64le-static"}
HIT_LINE = re.compile(r"^(site 0x[0-9a-f]+ \d+|mcount total \d+|mcount_loc records \d+)$")


def run(path: Path, qemu: str) -> subprocess.CompletedProcess[str]:
    require_tool(qemu)
    return subprocess.run([qemu, str(path)], capture_output=True, text=True, timeout=20)


def expected_output(path: Path, entry: dict) -> str:
    """The original program's results, with the hit lines that the sites now enabled give."""
    result = scan(Image.load(path))
    enabled = {s.addr for s in result.sites if s.state is SiteState.ENABLED}
    hits = {int(s["slot_addr"], 16): s["hits"] for s in entry["sites"]}
    lines = [line for line in entry["run"]["expected_stdout"].splitlines() if not HIT_LINE.match(line)]
    lines.append(f"mcount_loc records {result.records.count + result.records.zeroed}")  # table size
    lines.append(f"mcount total {sum(hits[a] for a in enabled)}")
    lines += [f"site {a:#x} {hits[a]}" for a in sorted(enabled) if hits[a]]
    return "\n".join(lines) + "\n"


def assert_runs_right(path: Path, name: str, manifest: dict) -> None:
    entry = manifest["binaries"][f"bin/{name}"]
    proc = run(path, RUNNABLE[name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_output(path, entry)


def states_of(path: Path) -> set[SiteState]:
    return {s.state for s in scan(Image.load(path)).sites}


def apply_to(src: Path, dst: Path, target: SiteState, route: Route | None = None, **kw) -> list[Path]:
    stage_dir = dst.parent / (dst.name + ".stages")
    apply_file(src, dst, Selection(), Options(target, route, **kw), stage_dir=stage_dir)
    return [*sorted(stage_dir.iterdir()), dst]


@pytest.mark.parametrize("name", sorted(RUNNABLE))
@pytest.mark.parametrize("route", [Route.MFLR_FIRST, Route.B8])
def test_every_state_and_stage_runs_with_the_same_results(name: str, route: Route, manifest: dict, tmp_path: Path):
    original = FIXTURES / "bin" / name
    if name == "std-le" and route is Route.B8:
        # gcc 5's `mflr; std; bl`: a `b +8` in the mflr slot lands on the bl; the planner says so.
        apply_to(original, tmp_path / "nopped", SiteState.NOPPED)
        with pytest.raises(NoRoute, match="guards nothing"):
            apply_to(tmp_path / "nopped", tmp_path / "enabled", SiteState.ENABLED, route)
        # ... and the command says it as `plan` does: a finding (exit 1), not bad input.
        cmd = ["apply", tmp_path / "nopped", "--to", "enabled", "--route", "b8", "-o", tmp_path / "enabled"]
        proc = subprocess.run([sys.executable, "-m", "rewriter", *map(str, cmd)], capture_output=True, text=True)
        assert proc.returncode == 1 and proc.stderr.startswith("mcountrw: no legal route: "), proc.stderr
        assert proc.stderr.count("\n") == 1 and not (tmp_path / "enabled").exists()
        return
    seen: set[SiteState] = set()
    chain = [
        (original, "nopped", SiteState.NOPPED),
        ("nopped", "enabled", SiteState.ENABLED),
        ("enabled", "disabled", SiteState.DISABLED),
        ("disabled", "nopped2", SiteState.NOPPED),
        ("nopped2", "disabled2", SiteState.DISABLED),
        ("disabled2", "enabled2", SiteState.ENABLED),
    ]
    for src, dst, target in chain:
        src_path = src if isinstance(src, Path) else tmp_path / src
        for image in apply_to(src_path, tmp_path / dst, target, route):
            seen |= states_of(image)
            assert SiteState.BROKEN not in states_of(image)
            assert_runs_right(image, name, manifest)
        assert states_of(tmp_path / dst) == {target}
    assert seen >= {SiteState.ENABLED, SiteState.DISABLED, SiteState.NOPPED}
    if route is Route.B8:
        assert SiteState.GUARDED in seen or SiteState.ARMED in seen


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_selected_functions_stop_calling_mcount(name: str, manifest: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    picked = manifest["binaries"][f"bin/{name}"]["sites"][0]["function"]
    apply_file(FIXTURES / "bin" / name, out, Selection(only=(picked,)), Options(SiteState.NOPPED, drop_records=True))
    after = scan(Image.load(out))
    # Nopped and unrecorded: the site is gone from the scan (its log still names it).
    everyone = {s["function"] for s in manifest["binaries"][f"bin/{name}"]["sites"]}
    assert {s.function for s in after.sites} == everyone - {picked}
    assert {s.state for s in after.sites} == {SiteState.ENABLED}
    assert after.records.zeroed == 1
    assert_runs_right(out, name, manifest)


def test_broken_site_misbehaves(manifest: dict, tmp_path: Path) -> None:
    """The race state, made by hand: mflr nopped while the bl stays. _mcount then "returns" to the
    stale r0 — the reason mcountrw never produces this state."""
    entry = manifest["binaries"]["bin/prof-le"]
    data = bytearray((FIXTURES / "bin" / "prof-le").read_bytes())
    site = next(s for s in entry["sites"] if s["function"] == "leaf_add")
    a = int(site["slot_offset"], 16) - 4
    assert data[a : a + 4] == (0x7C0802A6).to_bytes(4, "little")
    data[a : a + 4] = (0x60000000).to_bytes(4, "little")
    broken = tmp_path / "broken"
    broken.write_bytes(data)
    broken.chmod(0o755)
    assert SiteState.BROKEN in states_of(broken)
    try:
        proc = run(broken, "qemu-ppc64le-static")
    except subprocess.TimeoutExpired:
        return  # hung: misbehaved
    assert proc.returncode != 0 or proc.stdout != entry["run"]["expected_stdout"]


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "bin").iterdir()))
def test_nop_then_undo_gives_back_every_byte(name: str, tmp_path: Path) -> None:
    src = FIXTURES / "bin" / name
    out = tmp_path / name
    apply_file(src, out, Selection(), Options(SiteState.NOPPED, drop_records=True))
    log = out.with_name(out.name + ".mcountrw.jsonl")
    assert verify_files(src, out, log).ok
    back = tmp_path / "back"
    undo_file(out, log, back)
    assert back.read_bytes() == src.read_bytes()


def test_verify_fails_when_one_byte_changes(tmp_path: Path) -> None:
    src = FIXTURES / "bin" / "prof-le"
    out = tmp_path / "out"
    apply_file(src, out, Selection(), Options(SiteState.NOPPED))
    log = out.with_name(out.name + ".mcountrw.jsonl")
    data = bytearray(out.read_bytes())
    data[0x400] ^= 1
    out.write_bytes(data)
    verdict = verify_files(src, out, log)
    assert not verdict.ok and "0x400" in verdict.reason


def test_nopped_object_links_and_runs_without_its_calls(tmp_path: Path) -> None:
    """prof-le.o with every site nopped and its REL24 relocations removed, linked by the real
    linker with the fixtures' main, report and _mcount: no function calls _mcount any more."""
    gcc = "powerpc64le-linux-gnu-gcc"
    require_tool(gcc)
    obj = tmp_path / "prof-le.o"
    apply_file(FIXTURES / "bin" / "prof-le.o", obj, Selection(), Options(SiteState.NOPPED, drop_records=True))
    src = FIXTURES / "src"
    flags = ["-O2", "-fno-pie", "-Wa,-mregnames"]
    objs = []
    for f in ("main.c", "report.c", "mcount.S"):
        o = tmp_path / (f + ".o")
        subprocess.run([gcc, *flags, "-c", str(src / f), "-o", str(o)], check=True, cwd=FIXTURES)
        objs.append(str(o))
    exe = tmp_path / "prog"
    subprocess.run([gcc, "-static", "-no-pie", "-o", str(exe), *objs, str(obj)], check=True)
    proc = run(exe, "qemu-ppc64le-static")
    assert proc.returncode == 0
    assert "mcount total 0" in proc.stdout and "leaf_add(2, 5) = 11" in proc.stdout


def test_undo_in_place_step_by_step_keeps_the_log_beside_the_file_true(tmp_path: Path) -> None:
    """Two in-place rewrites, then two in-place undos with the log beside the file: after the first
    undo that log is the first rewrite's again (so the sites it nopped stay known and a second undo
    finds it), and after the second the file is the original and no log is left to describe
    a file that no longer exists. Only the last undo may call its output the original."""
    from typer.testing import CliRunner

    from rewriter.cli import app
    from rewriter.log import default_log_path

    work = tmp_path / "prog"
    work.write_bytes((FIXTURES / "bin" / "prof-le").read_bytes())
    log = default_log_path(work)
    for name in ("leaf_add", "sum8"):
        done = CliRunner().invoke(app, ["nop", str(work), "--in-place", "--drop-records", "--only", name])
        assert done.exit_code == 0, done.output
    first = CliRunner().invoke(app, ["undo", str(work), "--log", str(log), "--in-place"])
    assert first.exit_code == 0, first.output
    assert "the input of the step undone, not the original" in first.output and "is back at" in first.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog", "prog.mcountrw.jsonl"]
    seen = CliRunner().invoke(app, ["scan", str(work)])
    assert (
        seen.exit_code == 0
        and "6 sites (5 enabled->disabled, 1 nopped->nopped, 1 of them from the patch log)" in unwrapped(seen.output)
    ), seen.output
    second = CliRunner().invoke(app, ["undo", str(work), "--log", str(log), "--in-place"])
    assert second.exit_code == 0, second.output
    assert ", the original)" in second.output and f"removed {log}" in second.output
    assert work.read_bytes() == (FIXTURES / "bin" / "prof-le").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog"]


@pytest.mark.parametrize("name", ["anom-r0live", "anom-r0live.o"])
def test_check_r0_refuses_to_take_the_mflr_of_a_function_that_reads_r0(name: str, tmp_path: Path) -> None:
    """r0live_fn reads r0 after its site (the audit's r0live): nopping its mflr r0 changes what it
    does. With --check-r0 that is refused, nothing written, and the other functions are nopped
    when it is left out; without it (the default: the walk costs +50% of a whole nop) it is done."""
    src, out = FIXTURES / "bin" / name, tmp_path / "out"
    checked = Options(SiteState.NOPPED, drop_records=True, check_r0=True)
    with pytest.raises(PlanRejected, match=r"\(r0live_fn\): the function reads r0 before anything redefines it"):
        apply_file(src, out, Selection(), checked)
    assert not out.exists()
    left_out = apply_file(src, out, Selection(exclude=("r0live_fn",)), checked)
    assert {s.function for s in left_out.rewrite.sites} == {"r0safe_branches", "r0safe_base0"}
    from typer.testing import CliRunner

    from rewriter.cli import app

    refused = CliRunner().invoke(app, ["nop", str(src), "-o", str(tmp_path / "all"), "--check-r0"])
    assert refused.exit_code == 2 and "(audit: r0live)" in refused.output and not (tmp_path / "all").exists()
    done = CliRunner().invoke(app, ["nop", str(src), "-o", str(tmp_path / "all")])
    assert done.exit_code == 0, done.output
    assert {s.function for s in scan(Image.load(tmp_path / "all")).sites if s.state is SiteState.NOPPED} == {
        "r0live_fn", "r0safe_branches", "r0safe_base0"
    }  # fmt: skip


def test_the_r0_check_asks_only_where_an_mflr_goes(tmp_path: Path) -> None:
    """Only a site losing its mflr r0 is walked: moving r0live_fn to disabled (mflr r0; nop)
    keeps it, so it is no refusal."""
    out = tmp_path / "d"
    disabled = Options(SiteState.DISABLED, check_r0=True)
    apply_file(FIXTURES / "bin" / "anom-r0live", out, Selection(only=("r0live_fn",)), disabled)
    assert {s.state for s in scan(Image.load(out)).sites if s.function == "r0live_fn"} == {SiteState.DISABLED}


def test_dropping_the_record_of_a_patchable_site_that_reads_r0_is_refused(tmp_path: Path) -> None:
    """patchable: the kernel's init writes mflr r0 into a recorded site's first nop; dropping the
    record leaves the nop, so a body that reads r0 (here `mtctr r0` after the nops) would read
    garbage. Keeping the record (disabled: mflr r0; nop, written) is no refusal."""
    src = FIXTURES / "bin" / "patchable-le.o"
    site = next(s for s in scan(Image.load(src)).sites if s.function == "leaf_add")
    data = bytearray(src.read_bytes())
    data[site.file_offset + 4 : site.file_offset + 8] = (0x7C0903A6).to_bytes(4, "little")  # mtctr r0
    reads = tmp_path / "reads.o"
    reads.write_bytes(bytes(data))
    nop_drop = Options(SiteState.NOPPED, drop_records=True, check_r0=True)
    with pytest.raises(PlanRejected, match=r"\(leaf_add\): the function reads r0"):
        apply_file(reads, tmp_path / "out.o", Selection(only=("leaf_add",)), nop_drop)
    kept = Options(SiteState.DISABLED, drop_records=True, check_r0=True)
    apply_file(reads, tmp_path / "kept.o", Selection(only=("leaf_add",)), kept)


def test_prenop_check_r0_fails_the_file_and_names_the_function(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rewriter.cli import app

    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    out, src = tmp_path / "out", str(FIXTURES / "bin" / "anom-r0live.o")
    done = CliRunner().invoke(app, ["prenop", "--policy", str(policy), "--check-r0", "-o", str(out), src])
    assert done.exit_code == 2 and "(r0live_fn): the function reads r0" in done.output and not out.exists()
    assert CliRunner().invoke(app, ["prenop", "--policy", str(policy), "-o", str(out), src]).exit_code == 0
    undo = CliRunner().invoke(app, ["prenop", "--undo", "--check-r0", "--in-place", str(out)])
    assert undo.exit_code == 2 and "--check-r0 goes with pre-nopping" in undo.output
