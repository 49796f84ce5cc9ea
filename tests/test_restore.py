"""Selected functions come back from the patch log (issue 12), proven on the fixtures.

A pre-nop with --drop-records leaves sites that no scan finds (nopped, unrecorded). `apply --to
enabled` with the nop's log beside the file brings them back: words with the planner's stages,
the call's R_PPC64_REL24 (relocatable files) and the record. Run under qemu-user, the programs
call `_mcount` from exactly the sites brought back; every stage image runs right; bringing back
every site gives the original file byte for byte, and undo takes each step back exactly."""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES
from test_rewrite_fixtures import RUNNABLE, assert_runs_right, run

from rewriter.elf import structs as S
from rewriter.elf.image import Image
from rewriter.errors import ImageError
from rewriter.files import apply_file
from rewriter.generations import LAYOUTS
from rewriter.log import default_log_path, load
from rewriter.rewrite import Options, Selection
from rewriter.sites import Source, scan
from rewriter.states import SiteState

NOP_DROP = Options(SiteState.NOPPED, drop_records=True)
ENABLE = Options(SiteState.ENABLED)
SITE_LINE = re.compile(r"^site (0x[0-9a-f]+) (\d+)$", re.MULTILINE)


def mcountrw(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hits(path: Path, name: str) -> dict[int, int]:
    """`_mcount` hits by call-slot address, as the program prints them under qemu-user."""
    proc = run(path, RUNNABLE[name])
    assert proc.returncode == 0, proc.stderr
    return {int(a, 16): int(n) for a, n in SITE_LINE.findall(proc.stdout)}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_nop_all_then_enable_from_the_log_gives_the_original_back(name: str, manifest: dict, tmp_path: Path) -> None:
    """prof-le (ELFv2 little-endian), prof-be (ELFv1 big-endian), std-le (gcc 5's mflr; std; bl)."""
    original = FIXTURES / "bin" / name
    nopped, enabled, stages = tmp_path / "nopped", tmp_path / "enabled", tmp_path / "stages"
    done = mcountrw("nop", original, "-o", nopped, "--drop-records")
    assert done.returncode == 0, done.stderr
    assert scan(Image.load(nopped)).sites == () and hits(nopped, name) == {}  # invisible, and silent

    done = mcountrw("apply", nopped, "--to", "enabled", "-o", enabled, "--stage-images", stages)
    assert done.returncode == 0, done.stderr
    count = len(manifest["binaries"][f"bin/{name}"]["sites"])
    assert f"changed {count} sites to enabled" in done.stderr and f"{count} records restored" in done.stderr
    assert enabled.read_bytes() == original.read_bytes()
    assert hits(enabled, name) == hits(original, name) and sum(hits(original, name).values()) > 0
    images = sorted(stages.iterdir())
    assert len(images) == 2  # mflr r0 first, then (after the barrier) the bl
    for image in images:
        assert_runs_right(image, name, manifest)
    assert load(default_log_path(enabled)).header.base is not None


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_enable_only_one_or_two_functions_calls_mcount_from_those_alone(
    name: str, manifest: dict, tmp_path: Path
) -> None:
    entry = manifest["binaries"][f"bin/{name}"]
    by_function = {s["function"]: int(s["slot_addr"], 16) for s in entry["sites"]}
    nopped = tmp_path / "nopped"
    apply_file(FIXTURES / "bin" / name, nopped, Selection(), NOP_DROP)
    busy = [s["function"] for s in entry["sites"] if s["hits"]]
    for picked in ([busy[0]], busy[1:3]):
        out = tmp_path / ("-".join(picked))
        done = mcountrw("apply", nopped, "--to", "enabled", "-o", out, *[a for f in picked for a in ("--only", f)])
        assert done.returncode == 0, done.stderr
        assert set(hits(out, name)) == {by_function[f] for f in picked}
        assert_runs_right(out, name, manifest)
        after = scan(Image.load(out))
        assert {s.function for s in after.sites if s.recorded and s.state is SiteState.ENABLED} == set(picked)


@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "bin").iterdir()))
def test_every_fixture_comes_back_byte_for_byte(name: str, tmp_path: Path) -> None:
    """All kinds and generations: executables and objects, mprofile (REL24 and records back),
    patchable and ool (the records alone: their words never changed). A site comes back in the
    target state, so a file whose sites were all built that way comes back byte for byte; the
    anomaly fixtures' odd sites (anom-broken's `nop; bl`) come back enabled instead."""
    src = FIXTURES / "bin" / name
    nopped, back = tmp_path / "nopped", tmp_path / "back"
    before = scan(Image.load(src))
    first = apply_file(src, nopped, Selection(), NOP_DROP).rewrite
    again = apply_file(nopped, back, Selection(), ENABLE).rewrite
    assert len(again.restored) == len(first.dropped) > 0
    after = scan(Image.load(back))
    assert [(s.place, s.recorded) for s in after.sites] == [(s.place, s.recorded) for s in before.sites]
    if all(s.state is LAYOUTS[s.variant].built for s in before.sites):
        assert back.read_bytes() == src.read_bytes()
    else:
        assert {s.state for s in after.sites} == {SiteState.ENABLED} != {s.state for s in before.sites}


def test_one_function_of_an_object_gets_its_call_relocation_and_record_back(tmp_path: Path) -> None:
    src = FIXTURES / "bin" / "prof-le.o"
    nopped, out = tmp_path / "nopped.o", tmp_path / "out.o"
    apply_file(src, nopped, Selection(), NOP_DROP)
    apply_file(nopped, out, Selection(only=("leaf_add",)), ENABLE)
    image = Image.load(out)
    sites = {s.function: s for s in scan(image).sites}
    assert set(sites) == {"leaf_add"} and sites["leaf_add"].recorded
    assert sites["leaf_add"].state is SiteState.ENABLED
    text = image.section(".rela.text")
    assert text is not None
    rel24 = image.relocations(text)
    rel24 = rel24[S.r_type(rel24["r_info"]) == S.R_PPC64_REL24]
    assert sites["leaf_add"].offset in rel24["r_offset"].tolist()
    # ... the others are still only in the log, and the new log says so
    log = load(default_log_path(out))
    assert {line.function for line in log.sites if line.changed} == {
        "static_helper", "nonleaf_calls", "sum8", "fp_mix", "touch_global"
    }  # fmt: skip


def test_a_call_without_its_relocation_and_without_a_log_is_refused(tmp_path: Path) -> None:
    """Restoring a relocatable file's call needs the REL24 the nop took out: without the log, the
    loader would leave `bl .`, a branch to itself."""
    src = FIXTURES / "bin" / "prof-le.o"
    nopped = tmp_path / "nopped.o"
    apply_file(src, nopped, Selection(), Options(SiteState.NOPPED))  # records kept: still found
    with_log = apply_file(nopped, tmp_path / "back.o", Selection(), ENABLE)  # the log has the REL24s
    assert len(with_log.rewrite.sites) == 6 and (tmp_path / "back.o").read_bytes() == src.read_bytes()
    default_log_path(nopped).unlink()
    with pytest.raises(ImageError, match="R_PPC64_REL24"):
        apply_file(nopped, None, Selection(), ENABLE, dry_run=True)
    done = mcountrw("apply", nopped, "--to", "enabled", "-o", tmp_path / "out.o")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--input-log" in done.stderr
    assert not (tmp_path / "out.o").exists()


def test_patchable_and_ool_objects_get_one_record_back(tmp_path: Path) -> None:
    for name in ("patchable-le.o", "ool-le.o", "patchable-be.o", "ool-be.o"):
        nopped, out = tmp_path / f"{name}.nop", tmp_path / name
        apply_file(FIXTURES / "bin" / name, nopped, Selection(), NOP_DROP)
        assert scan(Image.load(nopped)).sites == ()
        r = apply_file(nopped, out, Selection(only=("sum8",)), ENABLE).rewrite
        assert not r.sites and [s.function for s in r.restored] == ["sum8"]  # no word written
        after = scan(Image.load(out))
        assert [(s.function, s.recorded, s.boot_state) for s in after.sites] == [("sum8", True, SiteState.DISABLED)]
        # without a log to restore from, `enabled` stays what it was: not written offline
        default_log_path(out).unlink()
        done = mcountrw("apply", out, "--to", "enabled", "--dry-run")
        assert done.returncode == 2 and "is not written offline" in done.stderr


def test_a_chain_undoes_step_by_step_to_the_original(tmp_path: Path) -> None:
    """Each step's log names the one before; undo of each gives the step before, sha256-exact."""
    steps = [(FIXTURES / "bin" / "prof-be.o", None)]
    chain = [
        ("nop", "--drop-records"),
        ("apply", "--to", "enabled", "--only", "leaf_add"),
        ("apply", "--to", "enabled", "--only", "sum8", "--only", "fp_mix"),
        ("nop", "--drop-records", "--only", "leaf_add"),
        ("apply", "--to", "enabled"),
    ]
    for n, args in enumerate(chain):
        out = tmp_path / f"step{n}.o"
        done = mcountrw(args[0], steps[-1][0], "-o", out, *args[1:])
        assert done.returncode == 0, done.stderr
        steps.append((out, default_log_path(out)))
        base = load(default_log_path(out)).header.base
        assert (base is None) == (n == 0)
        if base is not None:
            # named from the new log's directory, whatever directory the rewrite ran in
            assert (out.parent / base.path, base.sha256) == (steps[-2][1], sha(steps[-2][1]))
    assert steps[-1][0].read_bytes() == steps[0][0].read_bytes()  # everything back: the original
    for (before, _), (after, log) in reversed(list(itertools.pairwise(steps))):
        back = tmp_path / "back"
        done = mcountrw("undo", after, "--log", log, "-o", back)
        assert done.returncode == 0, done.stderr
        assert sha(back) == sha(before)


def test_in_place_keeps_the_base_log_under_its_hash(tmp_path: Path) -> None:
    f = tmp_path / "prog"
    f.write_bytes((FIXTURES / "bin" / "prof-le").read_bytes())
    assert mcountrw("nop", f, "--in-place", "--drop-records").returncode == 0
    first = default_log_path(f)
    first_sha = sha(first)
    nopped = f.read_bytes()
    done = mcountrw("apply", f, "--in-place", "--to", "enabled", "--only", "sum8")
    assert done.returncode == 0, done.stderr
    kept = tmp_path / f"prog.mcountrw.{first_sha[:12]}.jsonl"
    assert sha(kept) == first_sha
    assert load(first).header.base is not None and tmp_path / load(first).header.base.path == kept  # type: ignore[union-attr]
    assert mcountrw("undo", f, "--log", first, "--in-place").returncode == 0
    assert f.read_bytes() == nopped
    # the base log is the file's log again, under the default name, and the next undo finds it there
    assert sha(first) == first_sha and not kept.exists()
    assert mcountrw("undo", f, "--log", first, "--in-place").returncode == 0
    assert f.read_bytes() == (FIXTURES / "bin" / "prof-le").read_bytes() and not first.exists()


def test_the_log_sites_are_selected_like_the_others(tmp_path: Path) -> None:
    nopped = tmp_path / "nopped"
    apply_file(FIXTURES / "bin" / "prof-le", nopped, Selection(), NOP_DROP)
    r = apply_file(nopped, None, Selection(exclude=("sum8", "fp_mix")), ENABLE, dry_run=True)
    assert sorted(s.function or "" for s in r.rewrite.sites) == ["leaf_add", "nonleaf_calls", "static_helper",
                                                                 "touch_global"]  # fmt: skip
    assert {s.source for s in r.scan.sites} == {Source.LOG} and r.scan.log == default_log_path(nopped)
