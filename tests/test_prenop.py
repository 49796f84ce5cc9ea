"""`mcountrw prenop`: a policy over whole trees, in place or to a copy; idempotent, reproducible,
undoable, signed modules re-signed; the build-integration snippets; the result boots."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from boot import STANDARD_APPEND, boot, counts, make_initramfs, module_load_script, require_kernel, require_tool
from conftest import FIXTURES, prenop_targets
from cryptography.hazmat.primitives.asymmetric import rsa
from test_sign import _write_pair, openssl_verify
from typer.testing import CliRunner

from rewriter.batch import map_chunks
from rewriter.cli import app
from rewriter.edits import WordWrite
from rewriter.elf.compress import Compression, detect_compression
from rewriter.elf.image import Image
from rewriter.files import verify_files
from rewriter.log import load
from rewriter.output import publish
from rewriter.policy import parse
from rewriter.prenop import PrenopError, Settings, Status, prenop_target, run
from rewriter.sites import scan
from rewriter.states import SiteState

ROOT = Path(__file__).resolve().parent.parent
KEEP_CORE = ROOT / "examples" / "keep-core.policy"
BUILD = ROOT / "docs" / "build-integration"

# A handful of real modules, small and quick: nls_utf8 (4 sites), binfmt_misc (15), and ext4 (851,
# kept whole by keep-core.policy) with what it needs to load.
SMALL = ("fs/nls/nls_utf8.ko", "fs/binfmt_misc.ko", "fs/ext4/ext4.ko", "fs/jbd2/jbd2.ko", "fs/mbcache.ko",
         "lib/crc16.ko")  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shas(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _small_tree(corpus, where: Path, names=SMALL) -> Path:  # type: ignore[no-untyped-def]
    for name in names:
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus.modules_dir / name, where / name)
    return where


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _row(output: str, status: str) -> list[str]:
    """The summary-table row for ``status``: [files, sites nopped, sites kept]."""
    for line in output.splitlines():
        if line.strip().startswith(status + "  "):
            return line.strip()[len(status) :].split()
    raise AssertionError(f"no `{status}` row in:\n{output}")


# -- targets --------------------------------------------------------------------------------


def test_targets_mirror_directories_and_refuse_a_name_clash(tmp_path: Path) -> None:
    tree = tmp_path / "mods"
    for name in ("a/x.ko", "a/b/y.ko.xz", "z.ko.zst", "notes.txt", "a/x.o"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(b"")
    (tree / "link.ko").symlink_to(tree / "z.ko.zst")
    ts = prenop_targets([tree], output=tmp_path / "out", in_place=False, log_dir=tmp_path / "logs")
    assert [t.rel for t in ts] == ["a/b/y.ko.xz", "a/x.ko", "z.ko.zst"]
    assert ts[1].dest == tmp_path / "out/a/x.ko" and ts[1].log == tmp_path / "logs/a/x.ko.mcountrw.jsonl"
    (tmp_path / "x.ko").write_bytes(b"")
    with pytest.raises(PrenopError, match="would share the name"):
        prenop_targets([tree / "a/x.ko", tmp_path / "x.ko"], output=None, in_place=True, log_dir=None)
    one = prenop_targets([tmp_path / "x.ko"], output=tmp_path / "new.ko", in_place=False, log_dir=None)
    assert one[0].dest == tmp_path / "new.ko" and one[0].log == tmp_path / "new.ko.mcountrw.jsonl"


# -- one tree, small ------------------------------------------------------------------------


def test_policy_nops_what_it_says_and_keeps_the_rest(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :mod:binfmt_misc\nkeep bm_*_read\nkeep bm_*_write\nnop char2uni\n")
    code, out = _cli(
        "prenop", "--policy", policy, "--in-place", "--strip-signature", "--log-dir", tmp_path / "logs", tree
    )
    assert code == 0, out
    binfmt = scan(Image.load(tree / "fs/binfmt_misc.ko"))
    kept = {"bm_status_read", "bm_entry_read", "bm_register_write", "bm_entry_write", "bm_status_write"}
    assert {s.function for s in binfmt.sites} == kept
    assert all(s.state is SiteState.ENABLED and s.recorded for s in binfmt.sites)
    nls = scan(Image.load(tree / "fs/nls/nls_utf8.ko"))
    assert "char2uni" not in {s.function for s in nls.sites} and "uni2char" in {s.function for s in nls.sites}
    assert _row(out, "nopped") == ["2", "11", "7"]  # binfmt_misc 10 of 15, nls_utf8 1 of 3


def test_second_run_changes_nothing_and_says_so(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree")
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", tmp_path / "logs", tree)
    code, first = _cli(*args)
    assert code == 0, first
    assert _row(first, "nopped")[0] == "4" and _row(first, "nothing to nop") == ["2", "0", "851"]  # ext4, crc16
    before = _shas(tmp_path)
    code, second = _cli(*args)
    assert code == 0, second
    assert "nothing changed: all 6 files already match the policy" in second
    assert _row(second, "unchanged")[0] == "4"
    assert _shas(tmp_path) == before


def test_a_run_where_files_failed_does_not_say_every_file_matches(corpus, tmp_path: Path) -> None:
    """Signed modules without a signature option fail; the closing line must not read as if all were fine."""
    tree = _small_tree(corpus, tmp_path / "tree")
    code, out = _cli("prenop", "--policy", KEEP_CORE, "--dry-run", tree)
    assert code == 2, out
    assert _row(out, "failed")[0] == "4" and _row(out, "nothing to nop") == ["2", "0", "851"]
    line = "nothing changed: the 2 files that did not fail already match the policy; 4 failed (errors on stderr)"
    assert line in out.splitlines() and "all 2 files" not in out


def test_files_with_nothing_to_nop_are_not_written_and_get_no_log(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/ext4/ext4.ko",))
    stat = (tree / "fs/ext4/ext4.ko").stat()
    code, out = _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--log-dir", tmp_path / "logs", tree)
    assert code == 0, out
    assert (tree / "fs/ext4/ext4.ko").stat().st_mtime_ns == stat.st_mtime_ns
    assert not (tmp_path / "logs").exists()


def test_outputs_and_logs_are_byte_identical_wherever_the_tree_is(corpus, tmp_path: Path) -> None:
    results = []
    for where in ("one", "elsewhere/two"):
        base = tmp_path / where
        tree = _small_tree(corpus, base / "in")
        code, out = _cli("prenop", "--policy", KEEP_CORE, "-o", base / "out", "--strip-signature",
                         "--log-dir", base / "logs", "--jobs", "2" if where == "one" else "1", tree)  # fmt: skip
        assert code == 0, out
        results.append((_shas(base / "out"), _shas(base / "logs")))
    assert results[0] == results[1]
    assert len(results[0][0]) == 6 and len(results[0][1]) == 4  # ext4, crc16 copied, no log: nothing to nop
    assert not any(b"/one/" in p.read_bytes() for p in (tmp_path / "one/logs").rglob("*.jsonl"))


def test_a_changed_policy_rederives_from_the_original_and_one_undo_still_restores_it(corpus, tmp_path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    src = corpus.modules_dir / "fs/binfmt_misc.ko"
    logs = tmp_path / "logs"
    narrow, wide = tmp_path / "narrow.policy", tmp_path / "wide.policy"
    narrow.write_text("default nop\n")
    wide.write_text("default nop\nkeep bm_*\n")
    for policy in (narrow, wide):
        code, out = _cli("prenop", "--policy", policy, "--in-place", "--strip-signature", "--log-dir", logs, tree)
        assert code == 0, out
    assert {s.function for s in scan(Image.load(tree / "fs/binfmt_misc.ko")).sites} >= {"bm_status_read"}
    assert verify_files(src, tree / "fs/binfmt_misc.ko", logs / "fs/binfmt_misc.ko.mcountrw.jsonl").ok
    keep_all = tmp_path / "all.policy"
    keep_all.write_text("default nop\nkeep :mod:binfmt_misc\n")  # every site of it; nls_utf8 stays nopped
    code, out = _cli("prenop", "--policy", keep_all, "--in-place", "--strip-signature", "--log-dir", logs, tree)
    assert code == 0 and _row(out, "restored")[0] == "1", out
    assert _sha(tree / "fs/binfmt_misc.ko") == _sha(src)
    # The log described a rewrite that is gone: kept, it made --verify call the tree "undone since?".
    assert not (logs / "fs/binfmt_misc.ko.mcountrw.jsonl").exists()
    code, out = _cli("prenop", "--verify", "--log-dir", logs, tree)
    assert code == 0, out


def test_undo_restores_every_file_and_a_second_undo_says_so(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree")
    logs = tmp_path / "logs"
    assert _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, tree)[0] == 0
    code, out = _cli("prenop", "--undo", "--in-place", "--log-dir", logs, tree)
    assert code == 0 and _row(out, "undone")[0] == "4", out
    assert "sites restored" in out and "sites nopped" not in out  # an undo's sites come back
    assert _shas(tree) == {name: _sha(corpus.modules_dir / name) for name in sorted(SMALL)}
    code, out = _cli("prenop", "--undo", "--in-place", "--log-dir", logs, tree)
    assert code == 0 and "nothing changed: all 6 files already are their originals" in out


def test_one_file_to_a_new_name_keeps_its_log_beside_it_for_verify_and_undo(corpus, tmp_path: Path) -> None:
    src = corpus.modules_dir / "fs/nls/nls_utf8.ko"
    out = tmp_path / "x.ko"
    code, text = _cli("prenop", "--policy", KEEP_CORE, "--strip-signature", "-o", out, src)
    assert code == 0 and (tmp_path / "x.ko.mcountrw.jsonl").exists(), text
    code, text = _cli("prenop", "--verify", out, "--against", src)
    assert code == 0 and _row(text, "verified")[0] == "1", text
    code, text = _cli("prenop", "--undo", out, "-o", tmp_path / "back.ko")
    assert code == 0 and _row(text, "undone")[0] == "1", text
    assert _sha(tmp_path / "back.ko") == _sha(src)


def test_verify_catches_a_file_changed_after_prenop(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    logs = tmp_path / "logs"
    assert _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, tree)[0] == 0
    code, out = _cli("prenop", "--verify", "--log-dir", logs, tree, "--against", corpus.modules_dir)
    assert code == 0 and _row(out, "verified")[0] == "2", out
    data = bytearray((tree / "fs/binfmt_misc.ko").read_bytes())
    data[0x100] ^= 1
    (tree / "fs/binfmt_misc.ko").write_bytes(bytes(data))
    for extra in ((), ("--against", corpus.modules_dir)):
        code, out = _cli("prenop", "--verify", "--log-dir", logs, tree, *extra)
        assert code == 1 and "MISMATCH: fs/binfmt_misc.ko" in out, out


def test_verify_against_a_missing_pristine_file_fails_rather_than_mismatches(corpus, tmp_path: Path) -> None:
    """A pristine file that cannot be read is bad input (failed, exit 2), not a finding about the tree."""
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    logs = tmp_path / "logs"
    assert _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, tree)[0] == 0
    pristine = _small_tree(corpus, tmp_path / "pristine", ("fs/binfmt_misc.ko",))
    code, out = _cli("prenop", "--verify", "--log-dir", logs, tree, "--against", pristine)
    assert code == 2 and _row(out, "verified")[0] == "1" and _row(out, "failed")[0] == "1", out
    assert "MISMATCH" not in out and "nls_utf8.ko: No such file or directory" in out, out


def test_a_stale_log_is_refused_unless_the_file_is_declared_new(corpus, tmp_path: Path) -> None:
    """A rebuilt file fits neither side of its old log: by default that file fails (and only it)."""
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    logs = tmp_path / "logs"
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, tree)
    assert _cli(*args)[0] == 0
    shutil.copy2(corpus.modules_dir / "fs/nls/nls_cp437.ko", tree / "fs/nls/nls_utf8.ko")  # "rebuilt"
    code, out = _cli(*args)
    assert code == 2 and "nls_utf8.ko: is neither the input nor the output" in out
    assert _row(out, "unchanged")[0] == "1"
    code, out = _cli(*args, "--replace-stale-logs")
    assert code == 0 and _row(out, "nopped")[0] == "1", out


def test_signed_modules_need_a_signature_choice_and_the_run_is_refused_before_any_write(corpus, tmp_path: Path) -> None:
    """Only the signed module would fail, but the unsigned one is not written either: the run is
    refused before its first write (it nopped the unsigned one and left the tree half done)."""
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko",))
    fake = tmp_path / "tree/unsigned.ko"
    image = Image.load(tree / "fs/binfmt_misc.ko")
    fake.write_bytes(bytes(image.data[: image.elf_end]))
    unsigned = _sha(fake)
    code, out = _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--log-dir", tmp_path / "logs", tree)
    assert code == 2, out
    assert "binfmt_misc.ko: signed module" in out and "--sign-key/--sign-cert" in out
    assert "nothing written" in out and not (tmp_path / "logs").exists()
    assert _sha(tree / "fs/binfmt_misc.ko") == _sha(corpus.modules_dir / "fs/binfmt_misc.ko")
    assert _sha(fake) == unsigned


@pytest.mark.parametrize("kind", [Compression.XZ, Compression.GZIP, Compression.ZSTD])
def test_compressed_modules_are_recompressed_the_same_way_and_undo_gives_the_same_bytes(
    corpus, tmp_path: Path, kind: Compression
) -> None:
    from rewriter.elf.compress import compress, decompress

    suffix = {Compression.XZ: ".xz", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}[kind]
    plain = (corpus.modules_dir / "fs/binfmt_misc.ko").read_bytes()
    mod = tmp_path / "tree" / f"binfmt_misc.ko{suffix}"
    mod.parent.mkdir()
    packed = compress(plain, kind)
    mod.write_bytes(packed)
    logs = tmp_path / "logs"
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, mod.parent)
    assert _cli(*args)[0] == 0
    assert detect_compression(mod.read_bytes()[:8]) is kind
    assert not scan(Image.load(mod)).sites  # everything nopped, records dropped
    code, out = _cli(*args)
    assert code == 0 and "nothing changed" in out
    assert _cli("prenop", "--undo", "--in-place", "--log-dir", logs, mod.parent)[0] == 0
    assert mod.read_bytes() == packed and decompress(mod, packed, kind) == plain


def test_patchable_entry_object_loses_its_records_and_no_word_changes(tmp_path: Path) -> None:
    """A 6.6+ patchable-entry object is compiled `nop; nop`: pre-nopping it drops its records
    (`.rela__patchable_function_entries` rows) and writes no word; a rerun changes nothing and
    --undo gives the object back byte for byte."""
    obj = tmp_path / "patchable-le.o"
    shutil.copy2(ROOT / "fixtures/bin/patchable-le.o", obj)
    before = scan(Image.load(obj))
    assert before.records.count == 6 and all(s.recorded for s in before.sites)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    code, out = _cli("prenop", "--policy", policy, "--in-place", obj)
    assert code == 0 and "kept their records" not in out
    assert scan(Image.load(obj)).records.count == 0
    log = load(obj.with_name(obj.name + ".mcountrw.jsonl"))
    assert not [e for e in log.edits if isinstance(e, WordWrite)]
    assert log.header.summary["records_dropped"] == 6
    assert _cli("prenop", "--policy", policy, "--in-place", obj)[0] == 0
    assert _cli("prenop", "--undo", "--in-place", obj)[0] == 0
    assert obj.read_bytes() == (ROOT / "fixtures/bin/patchable-le.o").read_bytes()


def test_a_generation_that_contradicts_a_file_fails_that_file(tmp_path: Path) -> None:
    """--generation over a tree: a file whose contents say another generation is not rewritten by
    the option's layout; it fails with the rewrite's one line, and the others go on."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("patchable-le", "ool-le"):  # a directory is searched for modules
        shutil.copy2(ROOT / "fixtures/bin" / f"{name}.o", tree / f"{name}.ko")
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    report = tmp_path / "r.json"
    code, _ = _cli("prenop", "--policy", policy, "--generation", "ool", "--dry-run", "--report", report, tree)
    assert code == 2
    files = {f["path"]: (f["status"], f["message"]) for f in json.loads(report.read_text())["files"]}
    assert files["ool-le.ko"][0] == "nopped"
    assert files["patchable-le.ko"] == (
        "failed",
        f"{tree / 'patchable-le.ko'}: --generation ool contradicts what the image says: patchable (every recorded "
        "nop is followed by a nop: two patchable nops); a rewrite goes by the image's own layout (scan and audit "
        "can read it as ool)",
    )


# -- signing ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    return _write_pair(
        tmp_path_factory.mktemp("key"), rsa.generate_private_key(public_exponent=65537, key_size=2048), "k"
    )


def test_resigned_modules_verify_with_openssl_and_undo_brings_back_debians_signature(
    corpus, tmp_path: Path, key_pair
) -> None:
    key, cert = key_pair
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"))
    logs = tmp_path / "logs"
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--sign-key", key, "--sign-cert", cert, "--log-dir", logs)
    code, out = _cli(*args, tree)
    assert code == 0 and "module signatures: 2 re-signed" in out, out
    for name in ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"):
        result = openssl_verify(tree / name, cert, tmp_path)
        assert result.returncode == 0, result.stderr
        image = Image.load(tree / name)
        assert image.signature is not None and not scan(image).sites
    code, out = _cli("prenop", "--verify", "--log-dir", logs, tree, "--against", corpus.modules_dir)
    assert code == 0 and _row(out, "verified")[0] == "2" and "module signatures: 2 re-signed" in out, out
    code, out = _cli(*args, tree)
    assert code == 0 and "nothing changed" in out  # RSA signatures are deterministic
    code, out = _cli("prenop", "--undo", "--in-place", "--log-dir", logs, tree)
    assert code == 0 and _row(out, "undone")[0] == "2", out
    for name in ("fs/binfmt_misc.ko", "fs/nls/nls_utf8.ko"):
        assert _sha(tree / name) == _sha(corpus.modules_dir / name)


def test_signing_options_are_checked_before_any_file_is_touched(corpus, tmp_path: Path, key_pair) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/binfmt_misc.ko",))
    before = _shas(tree)
    key, _ = key_pair
    other = _write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048), "other")[1]
    code, out = _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--sign-key", key, "--sign-cert", other, tree)
    assert code == 2 and "not for the key" in out
    code, out = _cli("prenop", "--policy", KEEP_CORE, "--in-place", "--sign-key", key, tree)
    assert code == 2 and "--sign-key and --sign-cert go together" in out
    assert _shas(tree) == before


# -- library use ------------------------------------------------------------------------------


def test_prenop_target_computes_without_writing_and_publish_writes_log_then_file(corpus, tmp_path: Path) -> None:
    tree = _small_tree(corpus, tmp_path / "tree", ("fs/nls/nls_utf8.ko",))
    t = prenop_targets([tree], output=tmp_path / "out", in_place=False, log_dir=tmp_path / "logs")[0]
    report, outputs = prenop_target(t, Settings(parse("default nop\n"), strip_signature=True), None)
    assert report.status is Status.NOPPED and report.nopped == 3 and report.signature == "stripped"
    assert [o.path for o in outputs] == [t.log, t.dest] and not t.dest.exists()
    publish(outputs)
    assert verify_files(t.source, t.dest, t.log).ok


# -- the whole corpus -------------------------------------------------------------------------


@pytest.mark.slow
def test_whole_corpus_tree_in_place_verifies_is_idempotent_and_undoes(corpus, tmp_path: Path) -> None:
    """vmlinux and all 3,126 modules under keep-core.policy, in place on a copy: every file
    verifies against its log and the pristine corpus, a second run is a no-op, undo restores
    every file sha256-identically."""
    vmlinux = tmp_path / "boot" / corpus.vmlinux.name
    vmlinux.parent.mkdir()
    shutil.copy2(corpus.vmlinux, vmlinux)
    modules = tmp_path / "lib/modules" / corpus.modules_dir.parent.name
    shutil.copytree(corpus.modules_dir.parent, modules, symlinks=True)
    logs = tmp_path / "logs"
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, "-j", "2")
    pristine = {**_shas(modules), "vmlinux": _sha(corpus.vmlinux)}

    code, out = _cli(*args, vmlinux, modules)
    assert code == 0, out
    assert _row(out, "nopped") == ["3,103", "190,039", "77"]  # 77: do_one_initcall and the weak body 6.1 lists so
    assert _row(out, "nothing to nop") == ["24", "0", "851"]
    assert "module signatures: 3,102 stripped" in out
    sc = scan(Image.load(vmlinux))
    assert len(sc.sites) == 77 and sc.records.zeroed == counts("6.1").records - 77
    assert {s.function for s in sc.sites} >= {"do_one_initcall", "vfs_read", "vfs_write"}

    code, out = _cli("prenop", "--verify", "--log-dir", logs, modules, "--against", corpus.modules_dir.parent)
    assert code == 0 and _row(out, "verified")[:2] == ["3,102", "156,426"], out
    code, out = _cli("prenop", "--verify", "--log-dir", logs, vmlinux, "--against", corpus.vmlinux)
    assert code == 0 and _row(out, "verified")[:2] == ["1", "33,613"], out

    after = _shas(tmp_path)
    code, out = _cli(*args, vmlinux, modules)
    assert code == 0 and "nothing changed: all 3,127 files already match the policy" in out, out
    assert _shas(tmp_path) == after

    code, out = _cli("prenop", "--undo", "--in-place", "--log-dir", logs, "-j", "2", vmlinux, modules)
    assert code == 0 and _row(out, "undone")[:2] == ["3,103", "190,039"], out
    assert {**_shas(modules), "vmlinux": _sha(vmlinux)} == pristine


def _kept_by_keep_core(module: str, function: str | None) -> bool:
    """keep-core.policy spelled out: do_one_initcall, vfs_* and every function of ext4."""
    return module == "ext4" or function == "do_one_initcall" or (function or "").startswith("vfs_")


def _keep_core_counts(paths: Sequence[Path]) -> list[tuple[int, int]]:
    """(sites, of them kept by keep-core.policy) of each module, from its scan."""
    out = []
    for path in paths:
        module = path.name.split(".ko")[0].replace("-", "_")
        sc = scan(Image.load(path))
        out.append((len(sc.sites), sum(_kept_by_keep_core(module, sc.name_of(s)) for s in sc.sites)))
    return out


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_whole_patchable_and_ool_trees_lose_records_only_verify_rerun_and_undo_to_the_same_bytes(
    name: str, tmp_path: Path
) -> None:
    """keep-core.policy over the whole 6.12 and 7.2 trees (vmlinux and every .ko.xz), in place on a
    copy: no word changes (the sites already are nops), the nopped sites' records go, each rewritten
    module is xz again as Kbuild makes it and only those are written; every file verifies against
    the pristine tree, a second run is a no-op, and undo gives every file back sha256-identical,
    compressed bytes included. The expected counts come from the scan and the policy spelled out."""
    k = require_kernel(name)
    vmlinux = tmp_path / "boot" / "vmlinux"
    vmlinux.parent.mkdir()
    shutil.copy2(k.vmlinux, vmlinux)
    modules = tmp_path / "kernel"
    shutil.copytree(k.modules_dir, modules)
    pristine = _shas(tmp_path)
    logs = tmp_path.parent / f"{tmp_path.name}-logs"
    args = ("prenop", "--policy", KEEP_CORE, "--in-place", "--strip-signature", "--log-dir", logs, "-j", "2")

    vm_scan = scan(Image.load(k.vmlinux))
    vm_sites = vm_scan.sites
    vm_kept = [s for s in vm_sites if _kept_by_keep_core("vmlinux", vm_scan.name_of(s))]
    paths = sorted(k.modules_dir.rglob("*.ko.xz"))
    per_module = list(map_chunks(_keep_core_counts, paths, 2))
    touched = [p for p, (n, kept) in zip(paths, per_module, strict=True) if n > kept]
    mod_nopped = sum(n - kept for n, kept in per_module)

    code, out = _cli(*args, vmlinux, modules)
    assert code == 0 and "kept their records" not in out, out
    nopped = len(vm_sites) - len(vm_kept) + mod_nopped
    kept = len(vm_kept) + sum(kept for _, kept in per_module)
    assert _row(out, "nopped") == [f"{len(touched) + 1:,}", f"{nopped:,}", f"{kept - _kept_in_untouched(per_module):,}"]
    assert _row(out, "nothing to nop")[0] == f"{len(paths) - len(touched):,}"
    assert f"module signatures: {len(touched):,} stripped" in out
    after = scan(Image.load(vmlinux))
    assert after.records.count == len(vm_kept) and {s.function for s in after.sites} == {s.function for s in vm_kept}
    log = load(logs / "vmlinux.mcountrw.jsonl")
    assert not [e for e in log.edits if isinstance(e, WordWrite)]
    assert log.header.summary["records_dropped"] == counts(name).records - len(vm_kept)
    now = _shas(tmp_path)
    changed = {f"kernel/{p.relative_to(k.modules_dir).as_posix()}" for p in touched} | {"boot/vmlinux"}
    assert {f for f in pristine if now[f] != pristine[f]} == changed
    assert all(detect_compression((modules / p.relative_to(k.modules_dir)).read_bytes()[:8]) is Compression.XZ
               for p in touched)  # fmt: skip

    code, out = _cli("prenop", "--verify", "--log-dir", logs, vmlinux, "--against", k.vmlinux)
    assert code == 0 and _row(out, "verified")[:2] == ["1", f"{counts(name).records - len(vm_kept):,}"], out
    code, out = _cli("prenop", "--verify", "--log-dir", logs, "-j", "2", modules, "--against", k.modules_dir)
    assert code == 0 and _row(out, "verified")[:2] == [f"{len(touched):,}", f"{mod_nopped:,}"], out
    code, out = _cli(*args, vmlinux, modules)
    assert code == 0 and f"nothing changed: all {len(paths) + 1:,} files already match the policy" in out, out
    assert _shas(tmp_path) == now
    code, out = _cli("prenop", "--undo", "--in-place", "--log-dir", logs, "-j", "2", vmlinux, modules)
    assert code == 0 and _row(out, "undone")[:2] == [f"{len(touched) + 1:,}", f"{nopped:,}"], out
    assert _shas(tmp_path) == pristine
    shutil.rmtree(tmp_path, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)


def _kept_in_untouched(counts: Sequence[tuple[int, int]]) -> int:
    """Sites kept in modules left alone (all their sites kept): the summary counts them on the
    `nothing to nop` row, not the `nopped` one."""
    return sum(kept for n, kept in counts if n == kept)


# -- build integration --------------------------------------------------------------------------


def _env_with_mcountrw() -> dict[str, str]:
    """PATH with this interpreter's mcountrw first, as an installed mcountrw would be."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["MCOUNTRW"] = f"{sys.executable} -m rewriter"
    return env


def test_shell_example_prenops_an_installed_kernel_and_is_idempotent(corpus, tmp_path: Path) -> None:
    """docs/build-integration/prenop-installed-kernel.sh on a copy of the corpus's install tree
    (modules only, plus vmlinux): it prenops, verifies, and a second run changes nothing."""
    sh = require_tool("sh")
    root = tmp_path / "root"
    release = corpus.modules_dir.parent.name
    (root / "boot").mkdir(parents=True)
    shutil.copy2(corpus.vmlinux, root / "boot" / corpus.vmlinux.name)
    _small_tree(corpus, root / "lib/modules" / release / "kernel")
    env = {**_env_with_mcountrw(), "INSTALL_MOD_PATH": str(root), "KERNELRELEASE": release,
           "VMLINUX": str(root / "boot" / corpus.vmlinux.name), "MCOUNTRW_POLICY": str(KEEP_CORE),
           "MCOUNTRW_LOG_DIR": str(tmp_path / "logs"), "MCOUNTRW_SIGN": "strip"}  # fmt: skip
    script = BUILD / "prenop-installed-kernel.sh"
    first = subprocess.run([str(sh), str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "verified" in first.stdout
    assert not scan(Image.load(root / "lib/modules" / release / "kernel/fs/nls/nls_utf8.ko")).sites
    second = subprocess.run([str(sh), str(script)], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and "nothing changed" in second.stdout, second.stdout + second.stderr


def test_make_fragment_runs_as_a_postlink_step_and_on_a_modules_tree(corpus, tmp_path: Path) -> None:
    """docs/build-integration/mcountrw.mk: included by a stand-in for arch/powerpc/Makefile.postlink
    (with kbuild's `cmd` macro) for vmlinux, and its `mcountrw-modules` target for a tree."""
    make = require_tool("make")
    vmlinux = tmp_path / "vmlinux"
    shutil.copy2(corpus.vmlinux, vmlinux)
    postlink = tmp_path / "Makefile.postlink"
    postlink.write_text(
        "# what arch/powerpc/Makefile.postlink looks like, reduced to the mcountrw step\n"
        "cmd = @set -e; echo '  $(quiet_cmd_$(1))'; $(cmd_$(1))\n"
        f"include {BUILD / 'mcountrw.mk'}\n"
        "vmlinux: FORCE\n"
        "\t$(call cmd,mcountrw_vmlinux)\n"
        "FORCE:\n"
    )
    env = _env_with_mcountrw()
    common = [f"MCOUNTRW_POLICY={KEEP_CORE}", f"MCOUNTRW_LOG_DIR={tmp_path / 'logs'}", f"MCOUNTRW={env['MCOUNTRW']}"]
    r = subprocess.run([str(make), "-C", str(tmp_path), "-f", "Makefile.postlink", "vmlinux", *common],
                       env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PRENOP  vmlinux" in r.stdout
    assert {s.function for s in scan(Image.load(vmlinux)).sites} >= {"do_one_initcall"}
    assert len(scan(Image.load(vmlinux)).sites) == 77  # do_one_initcall twice: 6.1 lists its weak body so
    tree = _small_tree(corpus, tmp_path / "modlib/kernel", ("fs/nls/nls_utf8.ko", "fs/ext4/ext4.ko"))
    cmd = [str(make), "-f", str(BUILD / "mcountrw.mk"), "mcountrw-modules", f"MODLIB={tree.parent}",
           "MCOUNTRW_SIGN_ARGS=--strip-signature", *common]  # fmt: skip
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not scan(Image.load(tree / "fs/nls/nls_utf8.ko")).sites


# -- booting ------------------------------------------------------------------------------------

BOOT_MODULES = ("crc16", "mbcache", "jbd2", "ext4")  # in load order
BOOT_TREE = ("lib/crc16.ko", "fs/mbcache.ko", "fs/jbd2/jbd2.ko", "fs/ext4/ext4.ko")


@pytest.fixture(scope="module")
def prenopped_kernel(corpus, tmp_path_factory) -> tuple[Path, list[Path], Path]:  # type: ignore[no-untyped-def]
    """keep-core.policy applied to vmlinux and to ext4 with its dependencies (stripped signatures:
    this kernel does not force signatures and only taints)."""
    base = tmp_path_factory.mktemp("prenopped")
    tree = _small_tree(corpus, base / "in", BOOT_TREE)
    ts = prenop_targets([corpus.vmlinux, tree], output=base / "out", in_place=False, log_dir=base / "logs")
    reports = run(ts, Settings(parse(KEEP_CORE.read_text()), strip_signature=True), 2)
    assert [r.rel for r in reports] == [corpus.vmlinux.name, *sorted(str(m) for m in BOOT_TREE)]
    assert [r.status for r in reports] == [Status.NOPPED, Status.NOTHING, Status.NOPPED, Status.NOPPED, Status.NOTHING]
    mods = [base / "out" / rel for rel in BOOT_TREE]
    return base / "out" / corpus.vmlinux.name, mods, base


@pytest.mark.boot
def test_prenopped_vmlinux_boots_clean_and_traces_a_kept_function(prenopped_kernel) -> None:
    vmlinux, _, _ = prenopped_kernel
    r = boot(vmlinux, STANDARD_APPEND)
    assert r.panicked and not r.ftrace_bug and not r.oopsed
    # ftrace allocates for the whole table; it skips the zeroed records
    assert r.ftrace_entries == counts("6.1").records
    assert "do_one_initcall" in r.traced_functions


@pytest.mark.boot
def test_prenopped_modules_load_and_only_kept_functions_are_traceable(prenopped_kernel, corpus) -> None:
    vmlinux, mods, base = prenopped_kernel
    extra = (
        "echo vfs_read > $T/set_ftrace_filter\n"
        "echo function > $T/current_tracer\n"
        "read -r line < /proc/version\n"  # the shell's read(2); busybox cat would use sendfile
        "echo 0 > $T/tracing_on\n"
        "echo \"MCOUNTRW-VFS-READ $(grep -c ' vfs_read <-' $T/trace)\"\n"
        "echo nop > $T/current_tracer\n"
    )
    ramfs = make_initramfs(base / "initrd.cpio", corpus.busybox, mods, module_load_script(list(BOOT_MODULES), extra))
    r = boot(vmlinux, STANDARD_APPEND, initrd=ramfs, timeout=120)
    assert r.insmod == {m: 0 for m in BOOT_MODULES}, r.console[-3000:]
    assert r.tracer_rc == 0 and not r.ftrace_bug and not r.oopsed and r.done
    aff = r.available_filter_functions or []
    core = {f for f in aff if " [" not in f}
    kept = scan(Image.load(vmlinux))
    # by the name ftrace lists each under: a weak body kept (do_one_initcall's, 6.1) has no function
    assert core <= {kept.name_of(s) for s in kept.sites}
    assert core >= {kept.name_of(s) for s in kept.sites if s.section == ".text"}  # .init.text is freed after boot
    assert {"do_one_initcall", "vfs_read", "vfs_write"} <= core
    by_module = {f.split(" [")[1].rstrip("]") for f in aff if " [" in f}
    assert by_module == {"ext4"}  # jbd2, mbcache and crc16 were nopped whole
    ext4_text = {s.function for s in scan(Image.load(mods[-1])).sites if s.section == ".text"}
    assert {f.split(" [")[0] for f in aff if f.endswith("[ext4]")} >= ext4_text
    m = re.search(r"MCOUNTRW-VFS-READ (\d+)", r.console)
    assert m and int(m.group(1)) > 0


def test_reproducible_flag_is_accepted_and_two_trees_give_the_same_bytes(tmp_path: Path) -> None:
    """Build scripts pass --reproducible; mcountrw writes no timestamps, so it changes nothing."""
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    outputs = []
    for name in ("a", "b"):
        tree = tmp_path / name
        tree.mkdir()
        (tree / "clean.o").write_bytes((FIXTURES / "bin" / "clean.o").read_bytes())
        logs = tmp_path / f"logs-{name}"
        proc = subprocess.run(
            [sys.executable, "-m", "rewriter", "prenop", "--policy", str(policy), "--in-place", "--reproducible",
             "--log-dir", str(logs), str(tree / "clean.o")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outputs.append(((tree / "clean.o").read_bytes(), (logs / "clean.o.mcountrw.jsonl").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != (FIXTURES / "bin" / "clean.o").read_bytes()


def test_verify_against_a_path_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    """It was one "No such file or directory" line per file of the tree (3,127 for a whole kernel)."""
    missing = tmp_path / "pristine"
    code, out = _cli("prenop", "--verify", "--against", missing, ROOT / "fixtures/bin/prof-le")
    assert code == 2 and out == f"mcountrw: error: --against {missing}: No such file or directory\n", out
