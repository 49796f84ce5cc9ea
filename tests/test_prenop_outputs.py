"""What `prenop` writes: never a file the run reads or another file it writes (the input, a patch log,
the policy, the signing key, -o and --report), nothing at all when it finds nothing to do, and an
-o checked before any work as `nop` checks it (its directory must exist and take a new file).

Each case is refused in one line, exit 2, with every file below the test's directory as it was:
before, the run replaced the file and exited 0 (or failed at its end, the input blamed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import FIXTURES, assert_one_line, invoke
from cryptography.hazmat.primitives.asymmetric import rsa
from test_bad_input import _as_unprivileged, assert_cli_error, mcountrw
from test_cli_hygiene import _listing
from test_noops import no_mcount
from test_sign import _write_pair

OBJ = FIXTURES / "bin" / "prof-le.o"  # 6 mprofile sites; prenop takes it as a module under a .ko name


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """``in.o`` (6 sites), ``p.policy`` (keeps leaf_add), ``all.policy`` (nops all), ``done.o``
    pre-nopped in place with its log ``done.o.mcountrw.jsonl``, and ``tree/x.ko`` pre-nopped in
    place with its log under ``logs/``."""
    shutil.copy(OBJ, tmp_path / "in.o")
    shutil.copy(OBJ, tmp_path / "done.o")
    (tmp_path / "tree").mkdir()
    shutil.copy(OBJ, tmp_path / "tree" / "x.ko")
    (tmp_path / "p.policy").write_text("default nop\nkeep leaf_add\n")
    (tmp_path / "all.policy").write_text("default nop\n")
    (tmp_path / "out.o.mcountrw.jsonl").write_text("default nop\n")  # a policy named as a log would be
    policy = tmp_path / "p.policy"
    assert invoke("prenop", "-j", 1, "--policy", policy, "--in-place", tmp_path / "done.o").exit_code == 0
    logs = ("--log-dir", tmp_path / "logs")
    assert invoke("prenop", "-j", 1, "--policy", policy, "--in-place", *logs, tmp_path / "tree").exit_code == 0
    assert (tmp_path / "done.o.mcountrw.jsonl").is_file() and (tmp_path / "logs" / "x.ko.mcountrw.jsonl").is_file()
    return tmp_path


# -- 1. an output is no file the run reads, nor another output ---------------------------------------

# (command line, words of the one line); {w} is the test's directory.
REFUSED = {
    "in-place --report over the input's patch log": (
        "--policy {w}/p.policy {w}/done.o --in-place --report {w}/done.o.mcountrw.jsonl",
        "--report {w}/done.o.mcountrw.jsonl: is {w}/done.o.mcountrw.jsonl, a patch log this command reads",
    ),
    "dry-run --report over the input": (
        "--policy {w}/p.policy {w}/in.o --dry-run --report {w}/in.o",
        "--report {w}/in.o: is {w}/in.o, an input this command reads: the report would replace it",
    ),
    "-o over the policy": (
        "--policy {w}/p.policy {w}/in.o -o {w}/p.policy",
        "-o {w}/p.policy: is {w}/p.policy, the policy this command reads: the output would replace it",
    ),
    "dry-run -o over the policy": (
        "--policy {w}/p.policy {w}/in.o --dry-run -o {w}/p.policy",
        "-o {w}/p.policy: is {w}/p.policy, the policy this command reads",
    ),
    "verify --report over the input": (
        "--verify {w}/done.o --report {w}/done.o",
        "--report {w}/done.o: is {w}/done.o, an input this command reads",
    ),
    "verify --report over the pristine file of --against": (
        "--verify {w}/done.o --against {w}/in.o --report {w}/in.o",
        "--report {w}/in.o: is {w}/in.o, a pristine file this command reads (--against)",
    ),
    "undo -o over the patch log it reads": (
        "--undo {w}/done.o -o {w}/done.o.mcountrw.jsonl",
        "-o {w}/done.o.mcountrw.jsonl: is {w}/done.o.mcountrw.jsonl, a patch log this command reads",
    ),
    "undo in-place --report over the patch log": (
        "--undo --in-place {w}/done.o --report {w}/done.o.mcountrw.jsonl",
        "--report {w}/done.o.mcountrw.jsonl: is {w}/done.o.mcountrw.jsonl, a patch log this command reads",
    ),
    "-o over the input's own patch log": (
        "--policy {w}/p.policy {w}/done.o -o {w}/done.o.mcountrw.jsonl",
        "-o {w}/done.o.mcountrw.jsonl: is {w}/done.o.mcountrw.jsonl, the patch log of the input {w}/done.o",
    ),
    "-o equal to --report": (
        "--policy {w}/p.policy {w}/in.o -o {w}/new.o --report {w}/new.o",
        "--report {w}/new.o: is {w}/new.o, an output this command writes (-o): the report would replace it",
    ),
    "--report over the patch log the run writes": (
        "--policy {w}/p.policy {w}/in.o -o {w}/new.o --report {w}/new.o.mcountrw.jsonl",
        "--report {w}/new.o.mcountrw.jsonl: is {w}/new.o.mcountrw.jsonl, a patch log this command writes",
    ),
    "the patch log the run writes over the policy": (
        "--policy {w}/out.o.mcountrw.jsonl {w}/in.o -o {w}/out.o",
        "{w}/out.o.mcountrw.jsonl: is {w}/out.o.mcountrw.jsonl, the policy this command reads: "
        "the patch log of {w}/out.o would replace it",
    ),
    "--report over a log of --log-dir": (
        "--policy {w}/p.policy --in-place --log-dir {w}/logs {w}/tree --report {w}/logs/x.ko.mcountrw.jsonl",
        "--report {w}/logs/x.ko.mcountrw.jsonl: is {w}/logs/x.ko.mcountrw.jsonl, a patch log this command reads",
    ),
    "--report over the input by another name": (
        "--policy {w}/p.policy {w}/in.o --dry-run --report {w}/tree/../in.o",
        "--report {w}/tree/../in.o: is {w}/in.o, an input this command reads",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_output_never_replaces_a_file_the_run_reads_or_writes(work: Path, case: str) -> None:
    """The input, its patch log, the policy, a pristine file, the output or a log the run writes:
    `--report` and `-o` replaced each of them, exit 0 (a --verify's report replaced its input and
    then exited 2), in every mode; a log lost is an undo lost."""
    line, words = (text.format(w=work) for text in REFUSED[case])
    before = _listing(work)
    assert_one_line(invoke("prenop", *line.split()), 2, "error", words)
    assert _listing(work) == before


@pytest.mark.parametrize("option", ["--report", "-o"])
def test_an_output_never_replaces_the_signing_key_or_certificate(work: Path, option: str) -> None:
    key, cert = _write_pair(work, rsa.generate_private_key(public_exponent=65537, key_size=2048), "k")
    target, what = (key, "the signing key") if option == "--report" else (cert, "the signing certificate")
    signing = ("--sign-key", key, "--sign-cert", cert)
    before = _listing(work)
    mode = ("--dry-run",) if option == "--report" else ()  # a dry run writes only its report
    result = invoke("prenop", "--policy", work / "p.policy", *signing, *mode, work / "in.o", option, target)
    assert_one_line(result, 2, "error", f"{option} {target}: is {target}, {what} this command reads")
    assert _listing(work) == before


def test_an_output_tree_never_replaces_an_input_of_another_tree(work: Path) -> None:
    """``-o out`` for ``out/k`` (``a.ko``) and ``t`` (``k/a.ko``): the second's output is the first's
    input. Only an output equal to its own input was refused."""
    (work / "out" / "k").mkdir(parents=True)
    shutil.copy(OBJ, work / "out" / "k" / "a.ko")
    (work / "t" / "k").mkdir(parents=True)
    shutil.copy(OBJ, work / "t" / "k" / "a.ko")
    before = _listing(work)
    result = invoke("prenop", "--policy", work / "p.policy", "-o", work / "out", work / "out" / "k", work / "t")
    dest = work / "out" / "k" / "a.ko"
    assert_one_line(result, 2, "error", f"-o {dest}: is {dest}, an input this command reads")
    assert _listing(work) == before


# -- 2. nothing to do: nothing written ---------------------------------------------------------------


def _nothing_to_do(proc_stderr: str) -> None:
    assert "mcountrw: nothing to do: no ftrace call site in " in proc_stderr, proc_stderr
    assert "error" not in proc_stderr and "Traceback" not in proc_stderr, proc_stderr


def _writes_nothing(tmp_path: Path, source: Path, outputs: tuple[Path, ...]) -> None:
    """prenop of ``source`` (no ftrace site anywhere) to each of ``outputs`` says nothing to do,
    exit 1, and leaves every file below ``tmp_path`` as it was."""
    (tmp_path / "all.policy").write_text("default nop\n")
    before = _listing(tmp_path)
    for out in outputs:
        result = invoke("prenop", "-j", 1, "--policy", tmp_path / "all.policy", source, "-o", out)
        assert result.exit_code == 1, result.output
        _nothing_to_do(result.stderr)
        assert _listing(tmp_path) == before


def test_a_file_with_nothing_to_do_leaves_the_output_file_as_it_was(tmp_path: Path) -> None:
    """It exited 1, "nothing to do", and replaced the -o target with a copy of its input."""
    plain = no_mcount(tmp_path)
    target = tmp_path / "target.o"
    target.write_bytes(b"OLD\n")
    _writes_nothing(tmp_path, plain, (target, tmp_path / "new.o"))


def test_a_tree_with_nothing_to_do_makes_no_output_tree(tmp_path: Path) -> None:
    """It exited 1 and made OUT with a copy of every module; an OUT that was there stays as it was."""
    plain = no_mcount(tmp_path)
    (tmp_path / "tree").mkdir()
    shutil.copy(plain, tmp_path / "tree" / "x.ko")
    shutil.copy(plain, tmp_path / "tree" / "y.ko")
    (tmp_path / "there").mkdir()
    _writes_nothing(tmp_path, tmp_path / "tree", (tmp_path / "out2", tmp_path / "there"))


def test_a_tree_with_a_site_somewhere_still_copies_the_files_without_one(tmp_path: Path) -> None:
    """The copy of the tree holds the untouched files too, once a file of the run has a site."""
    plain = no_mcount(tmp_path)
    (tmp_path / "tree").mkdir()
    shutil.copy(plain, tmp_path / "tree" / "bare.ko")
    shutil.copy(OBJ, tmp_path / "tree" / "x.ko")
    (tmp_path / "all.policy").write_text("default nop\n")
    out = tmp_path / "out"
    result = invoke("prenop", "-j", 1, "--policy", tmp_path / "all.policy", tmp_path / "tree", "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "bare.ko").read_bytes() == plain.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["bare.ko", "x.ko", "x.ko.mcountrw.jsonl"]


# -- 3. -o in a directory that is not there ----------------------------------------------------------


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
def test_one_file_into_a_missing_directory_is_refused(tmp_path: Path, dry_run: tuple[str, ...]) -> None:
    """It made newdir/sub/ and wrote there, exit 0; `nop` and `prenop --report` refuse it (a dry
    run checks -o as the run it previews, as `nop --dry-run` does)."""
    (tmp_path / "all.policy").write_text("default nop\n")
    out = tmp_path / "newdir" / "sub" / "r.o"
    before = _listing(tmp_path)
    result = invoke("prenop", "--policy", tmp_path / "all.policy", OBJ, "-o", out, *dry_run)
    assert_one_line(result, 2, "error", f"{out}: directory {out.parent} does not exist")
    assert _listing(tmp_path) == before


def test_an_output_tree_is_made_with_its_parents_where_one_file_is_not(tmp_path: Path) -> None:
    """docs/prenop.md: a tree's -o is made, with the directories above it
    (test_cli_hygiene removes them again when the run is refused); one file's -o is a file, and
    its directory must be there, as for nop (the test above)."""
    (tmp_path / "tree").mkdir()
    shutil.copy(OBJ, tmp_path / "tree" / "x.ko")
    (tmp_path / "all.policy").write_text("default nop\n")
    out = tmp_path / "new" / "parents" / "OUT"
    assert invoke("prenop", "--policy", tmp_path / "all.policy", tmp_path / "tree", "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["x.ko", "x.ko.mcountrw.jsonl"]


def test_one_file_named_twice_writes_the_file_its_o_names(tmp_path: Path) -> None:
    """A file named twice is read once: -o names its output file, not a tree (it was refused: ``-o
    OUT: is OUT, the output tree this command writes``)."""
    src = tmp_path / "a.o"
    shutil.copy(OBJ, src)
    (tmp_path / "all.policy").write_text("default nop\n")
    out = tmp_path / "OUT"
    result = invoke("prenop", "--policy", tmp_path / "all.policy", src, tmp_path / "." / "a.o", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "OUT.mcountrw.jsonl").is_file()
    assert invoke("verify", src, out).exit_code == 0


# -- 4. an output that cannot be written: refused up front, the output blamed -------------------------


@pytest.mark.parametrize("how", ["-o file", "-o tree", "--in-place"])
def test_an_output_in_a_read_only_directory_is_refused_before_any_work(tmp_path: Path, how: str) -> None:
    """It failed at the end, the input blamed (`rod/r.o was not written: its input failed`), after a
    line about the log; `nop` says `OUT: cannot write in D` before any work."""
    (tmp_path / "all.policy").write_text("default nop\n")
    (tmp_path / "tree").mkdir()
    shutil.copy(OBJ, tmp_path / "tree" / "x.ko")
    rod = tmp_path / "rod"
    rod.mkdir()
    shutil.copy(OBJ, rod / "in.o")
    args, blamed = {
        "-o file": (("-o", rod / "r.o", OBJ), rod / "r.o"),
        "-o tree": (("-o", rod, tmp_path / "tree"), rod / "x.ko"),
        "--in-place": (("--in-place", rod / "in.o"), rod / "in.o"),
    }[how]
    rod.chmod(0o555)
    try:
        before = _listing(tmp_path)
        proc = mcountrw("prenop", "--policy", str(tmp_path / "all.policy"), *map(str, args), **_as_unprivileged())
        assert_cli_error(proc, f"{blamed}: cannot write in {rod}")
        assert _listing(tmp_path) == before
    finally:
        rod.chmod(0o755)
