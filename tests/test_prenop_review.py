"""`mcountrw prenop` says what it did and no more: a dry run (of a policy or of --undo) says it wrote
nothing and what it would do, a signature line says what became of the signatures in this run, a
rule is "unused" only among the files whose sites were decided, and a run whose files failed says
that -o OUT lacks them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from click.testing import Result
from conftest import FIXTURES, policy_file
from typer.testing import CliRunner

from rewriter.cli import app

BIN = FIXTURES / "bin"
ROOT = Path(__file__).resolve().parent.parent
BANNER = " (dry run: nothing written)"


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _row(output: str, status: str) -> list[str]:
    """The summary-table row for ``status``: [files, sites nopped(, sites kept)]."""
    for line in output.splitlines():
        if line.strip().startswith(status + "  "):
            return line.strip()[len(status) :].split()
    raise AssertionError(f"no `{status}` row in:\n{output}")


def _has_row(output: str, status: str) -> bool:
    return any(line.strip().startswith(status + "  ") for line in output.splitlines())


def _shas(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def _tree(where: Path, *, corrupt: bool = False) -> Path:
    """x.ko (mprofile, 6 sites), y.ko (3 sites, clean_*, all kept by :func:`_policy`: nothing to nop) and,
    with ``corrupt``, bad.ko: an ELF cut short, which fails."""
    where.mkdir(parents=True)
    shutil.copy(BIN / "prof-le.o", where / "x.ko")
    shutil.copy(BIN / "clean.o", where / "y.ko")
    if corrupt:
        (where / "bad.ko").write_bytes((BIN / "prof-le.o").read_bytes()[:100])
    return where


def _policy(tmp: Path, text: str = "default nop\nkeep leaf_add\nkeep clean_*\n") -> Path:
    return policy_file(tmp, text)


# -- 1. a dry run says it wrote nothing -----------------------------------------------------


def test_undo_dry_run_says_nothing_was_written_and_what_it_would_undo(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    out, logs = tmp_path / "out", tmp_path / "logs"
    done = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, "--log-dir", logs, tree)
    assert done.exit_code == 0, done.output
    before = _shas(tmp_path)

    report = tmp_path / "r.json"
    dry = invoke("prenop", "--undo", "--dry-run", "--log-dir", logs, "--report", report, "-o", tmp_path / "u", out)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0] == f"mcountrw prenop --undo: 2 files{BANNER}"
    assert _row(dry.stdout, "would undo") == ["1", "5"] and _row(dry.stdout, "no log") == ["1", "0"]
    assert not _has_row(dry.stdout, "undone"), dry.stdout
    assert not (tmp_path / "u").exists()
    assert _shas(tmp_path) == {**before, "r.json": _shas(tmp_path)["r.json"]}

    # The JSON keeps the statuses of the run it previews, and says once that it is a dry run.
    data = json.loads(report.read_text())
    assert data["dry_run"] is True and data["summary"].endswith(BANNER)
    assert {f["path"]: f["status"] for f in data["files"]} == {"x.ko": "undone", "y.ko": "no log"}


def test_the_header_counts_one_file_in_the_singular(tmp_path: Path) -> None:
    """`1 files` read wrong in prenop's first line; the counts go through prose.counted."""
    src = tmp_path / "prog.o"
    shutil.copy(FIXTURES / "bin" / "prof-le.o", src)
    dry = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", src)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0].endswith(f", 1 file{BANNER}"), dry.stdout


def test_a_real_undo_says_undone_and_its_report_is_no_dry_run(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    out, logs, report = tmp_path / "out", tmp_path / "logs", tmp_path / "r.json"
    assert invoke("prenop", "--policy", _policy(tmp_path), "-o", out, "--log-dir", logs, tree).exit_code == 0
    undo = invoke("prenop", "--undo", "--log-dir", logs, "--report", report, "-o", tmp_path / "u", out)
    assert undo.exit_code == 0, undo.output
    assert undo.stdout.splitlines()[0] == "mcountrw prenop --undo: 2 files"
    assert _row(undo.stdout, "undone") == ["1", "5"] and not _has_row(undo.stdout, "would undo")
    assert json.loads(report.read_text())["dry_run"] is False
    assert (tmp_path / "u" / "x.ko").read_bytes() == (tree / "x.ko").read_bytes()


def test_policy_dry_run_table_says_would_nop(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    report = tmp_path / "r.json"
    dry = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", "--report", report, tree)
    assert dry.exit_code == 0, dry.output
    assert dry.stdout.splitlines()[0].endswith(f"2 files{BANNER}")
    assert _row(dry.stdout, "would nop") == ["1", "5", "1"] and not _has_row(dry.stdout, "nopped")
    data = json.loads(report.read_text())
    assert data["dry_run"] is True and data["files"][0]["status"] == "nopped"
    assert not (tree / "x.ko.mcountrw.jsonl").exists()


def test_signature_line_says_what_this_run_did_to_them(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Debian's 6.1 modules are signed: a dry run strips nothing, a rerun finds them stripped before."""
    tree = tmp_path / "tree"
    for name in ("fs/nls/nls_utf8.ko", "fs/binfmt_misc.ko"):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(corpus.modules_dir / name, tree / name)
    policy = ROOT / "examples" / "keep-core.policy"
    args = ("prenop", "--policy", policy, "--strip-signature", "--log-dir", tmp_path / "logs")

    def signature_lines(result: Result) -> list[str]:
        assert result.exit_code == 0, result.output
        return [line for line in result.stdout.splitlines() if line.startswith("module signatures:")]

    assert signature_lines(invoke(*args, "--dry-run", tree)) == ["module signatures: 2 would be stripped"]
    assert signature_lines(invoke(*args, "-o", tmp_path / "out", tree)) == ["module signatures: 2 stripped"]
    assert signature_lines(invoke(*args, "-o", tmp_path / "out", tree)) == ["module signatures: 2 already stripped"]
    assert signature_lines(invoke(*args, "--dry-run", "-o", tmp_path / "out", tree)) == [
        "module signatures: 2 already stripped"
    ]


# -- 2. a rule decides no site only among the files decided ---------------------------------


def test_rule_warning_counts_only_the_files_decided(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", corrupt=True)
    policy = _policy(tmp_path, "default nop\nkeep leaf_add\nkeep clean_*\nkeep no_such_fn\n")
    result = invoke("prenop", "--policy", policy, "--dry-run", tree)
    assert result.exit_code == 2, result.output
    warnings = [line for line in result.stdout.splitlines() if "decides no site" in line]
    assert warnings == [
        f"warning: {policy}:4: `keep no_such_fn` decides no site in the 2 files decided "
        "(1 failed: their sites were not decided)"
    ]


def test_no_rule_warning_when_no_file_was_decided(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "bad.ko").write_bytes((BIN / "prof-le.o").read_bytes()[:100])
    result = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", tree)
    assert result.exit_code == 2 and _row(result.stdout, "failed") == ["1", "0", "0"], result.output
    assert "decides no site" not in result.output


def test_a_signed_module_that_failed_is_not_counted_against_its_rule(corpus, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The review's case: nf_conntrack, signed, no signature option: it fails, and `nop nf_*:mod:nf_*`
    (which decides hundreds of its sites, `policy check` says) is not reported as deciding none."""
    tree = tmp_path / "tree" / "kernel" / "net" / "netfilter"
    tree.mkdir(parents=True)
    shutil.copy2(corpus.modules_dir / "net/netfilter/nf_conntrack.ko", tree)
    result = invoke("prenop", "--policy", ROOT / "examples" / "nop-hot-paths.policy", "-o", tmp_path / "o",
                    tmp_path / "tree")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "signed module: nopping invalidates its signature" in result.stderr
    assert "decides no site" not in result.output


# -- 3. -o OUT lacks the files that failed, and the run says so -----------------------------


def test_output_tree_lacks_failed_files_and_says_so(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", corrupt=True)
    out = tmp_path / "out"
    result = invoke("prenop", "--policy", _policy(tmp_path), "-o", out, tree)
    assert result.exit_code == 2, result.output
    # Every file that did not fail is there, the untouched one too; the failed one is not.
    assert sorted(p.name for p in out.iterdir()) == ["x.ko", "x.ko.mcountrw.jsonl", "y.ko"]
    assert (out / "y.ko").read_bytes() == (tree / "y.ko").read_bytes()
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"mcountrw: error: {tree / 'bad.ko'}: ")
    assert lines[1] == (
        f"mcountrw: error: {out} is incomplete: 1 file failed and is not written there (the lines above; a copy "
        "an earlier run wrote is left as it was); first: bad.ko"
    )


def test_one_file_that_failed_says_its_error_and_nothing_else(tmp_path: Path) -> None:
    """Its error line, then `OUT was not written: its input failed`, `done in 0.0 s with 2 workers`
    (not on a terminal either), and a table of one failed file on stdout: the error says it all."""
    bad = tmp_path / "bad.ko"
    bad.write_bytes((BIN / "prof-le.o").read_bytes()[:100])
    out = tmp_path / "out.ko"
    for mode in (("-o", out), ("--dry-run",), ("--in-place",)):
        result = invoke("prenop", "--policy", _policy(tmp_path), *mode, bad)
        assert result.exit_code == 2, result.output
        assert not out.exists() and not result.stdout, result.stdout
        assert result.stderr.splitlines() == [f"mcountrw: error: {bad}: section header table at offset 0x870 size "
                                              "0x3c0 runs past the end of the file"]  # fmt: skip


def test_undo_to_an_output_tree_says_which_files_it_lacks(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree")
    out, logs = tmp_path / "out", tmp_path / "logs"
    assert invoke("prenop", "--policy", _policy(tmp_path), "-o", out, "--log-dir", logs, tree).exit_code == 0
    shutil.copy(BIN / "prof-be.o", out / "x.ko")  # neither the input nor the output of its log
    result = invoke("prenop", "--undo", "--log-dir", logs, "-o", tmp_path / "u", out)
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["y.ko"]
    assert f"mcountrw: error: {tmp_path / 'u'} is incomplete: 1 file failed" in result.stderr


def test_a_dry_run_with_failures_names_no_incomplete_output(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "tree", corrupt=True)
    result = invoke("prenop", "--policy", _policy(tmp_path), "--dry-run", "-o", tmp_path / "out", tree)
    assert result.exit_code == 2 and "incomplete" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_docs_say_output_lacks_failed_files() -> None:
    text = " ".join((ROOT / "docs" / "prenop.md").read_text().split())
    assert "a complete copy of the tree, untouched files included)" not in text
    assert "OUT is incomplete: N files failed and are not written there" in text
    assert "do not package an OUT from a run that exited 2" in text
