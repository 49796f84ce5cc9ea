"""A kernel developer's review of apply, nop, undo and verify on the 6.12 and 7.2 images and their
.ko.xz modules: what each command's account says it did, held to the scan of its result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from boot import require_kernel
from conftest import FIXTURES, assert_one_line, invoke

from rewriter.elf.compress import Compression, decompress
from rewriter.elf.signature import parse_trailer


def _scan(path: Path) -> dict:
    done = invoke("scan", "--format", "json", path)
    assert done.exit_code == 0, done.output
    (image,) = json.loads(done.stdout)["images"]
    return image  # type: ignore[no-any-return]


def _traceable(image: dict) -> int:
    return sum(s["traceable"] for s in image["sites"])


# -- records dropped and restored: counted as the scan of the result counts them ----------------------


@pytest.mark.corpus
@pytest.mark.slow
def test_the_count_of_sites_made_untraceable_is_the_difference_the_scan_shows(tmp_path: Path) -> None:
    """7.2 records 259 bodies of overridden weak functions that the kernel disables (scan:
    weak-body, available_filter_functions: __ftrace_invalid_address___N). `nop --drop-records`
    said "made 42648 sites untraceable after boot", and `apply --to enabled` of its output "made
    42647 sites traceable after boot again", where scan counts 42389 traceable before and 1 after."""
    vmlinux = tmp_path / "vmlinux"
    shutil.copy(require_kernel("7.2").vmlinux, vmlinux)
    nopped, back = tmp_path / "v.nop", tmp_path / "v.back"
    before = _scan(vmlinux)
    done = invoke("nop", vmlinux, "-o", nopped, "--drop-records", "--exclude", "do_one_initcall")
    assert done.exit_code == 0, done.output
    after = _scan(nopped)
    lost = _traceable(before) - _traceable(after)
    recorded = sum(s["recorded"] for s in before["sites"]) - sum(s["recorded"] for s in after["sites"])
    assert 0 < lost < recorded  # some records were of sites no kernel traces
    assert f"made {lost} sites untraceable after boot: records dropped" in done.stderr, done.stderr
    assert f"{recorded - lost} more records dropped, of sites the kernel does not trace" in done.stderr
    restored = invoke("apply", nopped, "--to", "enabled", "-o", back)
    assert restored.exit_code == 0, restored.output
    assert _traceable(_scan(back)) == _traceable(before)  # the original, byte for byte, as scanned
    assert f"made {lost} sites traceable after boot again: records restored" in restored.stderr, restored.stderr
    assert f"{recorded - lost} more records restored, of sites the kernel will not trace" in restored.stderr
    weak = next(s for s in before["sites"] if s["recorded"] and not s["traceable"])
    one = invoke("nop", vmlinux, "--dry-run", "--drop-records", "--addr", hex(weak["address"]))
    assert one.exit_code == 0, one.output
    assert "would make 0 sites untraceable after boot" in one.stderr, one.stderr
    assert "; 1 record would be dropped, of sites the kernel does not trace (1 weak-body)" in one.stderr


# -- a signature cut off is said, as prenop says it -----------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_nop_says_it_stripped_the_signature_of_a_signed_module(name: str, tmp_path: Path) -> None:
    """Debian's modules are signed; `nop --strip-signature` cut the trailer off (the log said so,
    summary.signature_stripped) and its account said nothing of it: the module then taints a
    kernel that checks signatures (qemu: tainted 8192 on 6.12 and 7.2) and is refused where they
    are enforced. An unsigned module loses nothing and nothing is said."""
    shipped = require_kernel(name).modules_dir / "fs" / "nls" / "nls_utf8.ko.xz"
    content = decompress(shipped, shipped.read_bytes(), Compression.XZ)
    trailer = parse_trailer(content)
    assert trailer is not None
    unsigned = tmp_path / "unsigned.ko"
    unsigned.write_bytes(content[: trailer.elf_end])
    for src, cut in ((shipped, len(content) - trailer.elf_end), (unsigned, None)):
        out = tmp_path / f"out-{src.name}"
        done = invoke("nop", src, "-o", out, "--only", "char2uni", "--drop-records", "--strip-signature")
        assert done.exit_code == 0, done.output
        said = [line for line in done.stderr.splitlines() if "signature" in line]
        assert len(said) == (cut is not None), done.stderr
        if cut is not None:
            assert said[0].startswith(f"module signature stripped ({cut} bytes): "), said
            undone = invoke("undo", out, "-o", tmp_path / "back.ko.xz")
            assert undone.exit_code == 0, undone.output
            assert (tmp_path / "back.ko.xz").read_bytes() == shipped.read_bytes()


# -- apply --to enabled twice: the log was read ----------------------------------------------------------


def test_enabling_again_says_the_log_was_read_and_knows_nothing_to_bring_back(tmp_path: Path) -> None:
    """`apply --to enabled` brings back what a `nop --drop-records` took out of a patchable file;
    run again on its output, it was refused saying sites "come back this way when their patch log
    is read", when the log beside it had been read and knew none to bring back."""
    src = tmp_path / "p.o"
    shutil.copy(FIXTURES / "bin" / "patchable-le.o", src)
    nopped, back, again = tmp_path / "n.o", tmp_path / "b.o", tmp_path / "a.o"
    assert invoke("nop", src, "-o", nopped, "--drop-records").exit_code == 0
    assert invoke("apply", nopped, "--to", "enabled", "-o", back).exit_code == 0
    assert back.read_bytes() == src.read_bytes()
    line = assert_one_line(invoke("apply", back, "--to", "enabled", "-o", again), 2, "error", str(back))
    assert f"its patch log {back}.mcountrw.jsonl was read" in line and "no selected site" in line, line
    assert not again.exists()
    fresh = assert_one_line(invoke("apply", src, "--to", "enabled", "-o", again), 2, "error", str(src))
    assert "come back this way when their patch log is read" in fresh and not again.exists()


# -- nop --drop-records twice: the rerun says the records are gone too -------------------------------------


def test_a_rerun_of_nop_drop_records_says_the_records_are_gone_too(tmp_path: Path) -> None:
    """On 6.12 and 7.2 `nop; nop` (or `nop`) is also what the untouched file holds, where `nop`
    without --drop-records is refused as doing nothing; the rerun's "already nopped (nop; nop)"
    said no more than that. It now says what makes the sites done: their records are dropped."""
    src = tmp_path / "p.o"
    shutil.copy(FIXTURES / "bin" / "patchable-le.o", src)
    once, twice = tmp_path / "1.o", tmp_path / "2.o"
    first = invoke("nop", src, "-o", once, "--drop-records")
    assert first.exit_code == 0, first.output
    recorded = [s for s in _scan(src)["sites"] if s["recorded"]]
    assert recorded and not any(s["recorded"] for s in _scan(once)["sites"])
    again = invoke("nop", once, "-o", twice, "--drop-records")
    assert again.exit_code == 0, again.output
    n = len(recorded)
    assert f"all {n} selected sites are already nopped (nop; nop), their records dropped" in again.stderr, again.stderr
    assert twice.read_bytes() == once.read_bytes()


# -- --check-r0 says what it walked ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "drop"), [("prof-le.o", False), ("patchable-le.o", True), ("ool-le.o", True)])
def test_check_r0_says_what_it_walked(name: str, drop: bool, tmp_path: Path) -> None:
    """`--check-r0` passed silently: on 7.2 (ool, no mflr r0 at the entry) it walks nothing, and a
    user read its silence as a check made. It now says how many sites it walked and their
    verdicts (the audit's mflr-nop safety counts of the same file), or that there was nothing."""
    audit = invoke("audit", "--format", "json", FIXTURES / "bin" / name)
    (image,) = json.loads(audit.stdout)["images"]
    safety = {k: image["mflr_nop_safety"][k] for k in ("safe", "live", "unknown") if image["mflr_nop_safety"][k]}
    done = invoke("nop", FIXTURES / "bin" / name, "-o", tmp_path / "out.o", "--check-r0", *(["--drop-records"] * drop))
    assert done.exit_code == 0, done.output
    (said,) = [line for line in done.stderr.splitlines() if line.startswith("--check-r0: ")]
    if name.startswith("ool"):
        assert said.endswith(": nothing walked"), said
    else:
        counts = ", ".join(f"{n} {v}" for v, n in sorted(safety.items()))
        assert said == f"--check-r0: walked the {sum(safety.values())} sites whose mflr r0 goes: {counts}", said


# -- a refused rewrite leaves no stage image behind --------------------------------------------------------


def test_a_stage_image_that_cannot_be_written_leaves_none_of_the_others(tmp_path: Path) -> None:
    """Each stage image was renamed into place as it was made, before the output: when the second
    could not be (a directory of its name), the run stopped, exit 2, with the first left behind (a
    whole vmlinux, 47 MB, on 6.12 with --route b8). Now they are published with the output, all
    or none."""
    src = FIXTURES / "bin" / "prof-le.o"  # mprofile: nop is two stages (bl, then mflr)
    stages = tmp_path / "st"
    (stages / "prof-le.o.stage2").mkdir(parents=True)
    out = tmp_path / "out.o"
    assert_one_line(invoke("nop", src, "-o", out, "--stage-images", stages), 2, "error", "prof-le.o.stage2")
    assert sorted(p.name for p in stages.iterdir()) == ["prof-le.o.stage2"]
    assert not out.exists() and not Path(f"{out}.mcountrw.jsonl").exists()
    (stages / "prof-le.o.stage2").rmdir()
    done = invoke("nop", src, "-o", out, "--stage-images", tmp_path / "new" / "st")
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "new" / "st").iterdir()) == ["prof-le.o.stage1", "prof-le.o.stage2"]


# -- undo runs with the collector paused, as apply does --------------------------------------------------


def test_undo_runs_with_the_cyclic_collector_paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``@collector_paused()`` meant for undo_file sat on the class defined above it since cc7ce78,
    which made ``Settled`` a function and left undo's log parsing (38,000 lines for a 6.12 vmlinux
    pre-nop) with the collector running."""
    import gc

    from rewriter import files

    assert isinstance(files.Settled, type)
    out = tmp_path / "n.o"
    assert invoke("nop", FIXTURES / "bin" / "prof-le.o", "-o", out).exit_code == 0
    seen: list[bool] = []
    load = files.load

    def spy(*args: object, **kwargs: object) -> files.Log:
        seen.append(gc.isenabled())
        return load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "load", spy)
    undone = files.undo_file(out, Path(f"{out}.mcountrw.jsonl"), tmp_path / "back.o")
    assert seen == [False] and gc.isenabled()
    assert undone.output.read_bytes() == (FIXTURES / "bin" / "prof-le.o").read_bytes()


# -- verify with its two files the other way round -------------------------------------------------------


def test_verify_says_when_original_and_patched_are_given_the_other_way_round(tmp_path: Path) -> None:
    """`verify v.nop v --log v.nop.mcountrw.jsonl` said only that v.nop is not the log's input."""
    src, out = tmp_path / "p.o", tmp_path / "n.o"
    shutil.copy(FIXTURES / "bin" / "patchable-le.o", src)
    assert invoke("nop", src, "-o", out, "--drop-records").exit_code == 0
    log = f"{out}.mcountrw.jsonl"
    swapped = invoke("verify", out, src, "--log", log)
    assert swapped.exit_code == 1, swapped.output
    assert f"; it is the log's output, and {src} its input: ORIGINAL and PATCHED given" in swapped.stdout
    other = invoke("verify", FIXTURES / "bin" / "ool-le.o", out, "--log", log)  # another file: no such note
    assert other.exit_code == 1 and "is not the file this log was made from" in other.stdout
    assert "the other way round" not in other.stdout


@pytest.mark.corpus
def test_kernel_of_another_generation_is_named_with_its_article(tmp_path: Path) -> None:
    module = require_kernel("7.2").modules_dir / "fs" / "nls" / "nls_utf8.ko.xz"
    done = invoke("nop", module, "-o", tmp_path / "m.ko.xz", "--drop-records", "--strip-signature",
                  "--kernel", require_kernel("6.12").vmlinux)  # fmt: skip
    assert_one_line(done, 2, "error", "is an ool module: not the kernel that loads it")
    assert not (tmp_path / "m.ko.xz").exists()


def test_undo_of_a_truncated_file_says_it_is_shorter_than_the_logs_output(tmp_path: Path) -> None:
    """A rewritten file cut short (a copy interrupted) was refused as if the log were another
    file's; the line now says the file is shorter than the log's output."""
    out = tmp_path / "n.o"
    assert invoke("nop", FIXTURES / "bin" / "prof-le.o", "-o", out).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole[:1000])
    back = tmp_path / "back.o"
    line = assert_one_line(invoke("undo", out, "-o", back), 2, "error", "this log is for another file")
    assert f"; {out} is 1000 bytes, its output {len(whole)}: truncated?" in line, line
    assert not back.exists()
