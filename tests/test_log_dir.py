"""`--log-dir` on the read-only commands: scan, audit, diff and policy check find each file's patch
log where `prenop --log-dir` wrote it (DIR/<name in the tree>.mcountrw.jsonl), so the sites only
the logs know (nopped and unrecorded: invisible in the file) are seen; without it they are not.
A wrong directory is one warning line, a log that describes another file is ignored with the
beside-the-file warning, and `--log` with `--log-dir` is refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import Result
from conftest import FIXTURES, prenop_targets, unwrapped
from typer.testing import CliRunner

from rewriter.batch import expand_named
from rewriter.cli import app

BIN = FIXTURES / "bin"
FUNCTIONS = {"static_helper", "leaf_add", "nonleaf_calls", "sum8", "fp_mix", "touch_global"}  # 6 sites each
NAMES = ("prof.ko", "sub/patch.ko")  # mprofile and patchable, as modules in a tree


def invoke(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _tree(where: Path) -> Path:
    (where / "sub").mkdir(parents=True)
    shutil.copy(BIN / "prof-le.o", where / "prof.ko")
    shutil.copy(BIN / "patchable-le.o", where / "sub" / "patch.ko")
    return where


def _prenop(tmp: Path, policy_text: str, name: str) -> tuple[Path, Path]:
    """The fixture tree pre-nopped by ``policy_text`` to ``tmp/name``, its logs in ``tmp/name-logs``."""
    tree = tmp / "tree" if (tmp / "tree").is_dir() else _tree(tmp / "tree")
    policy = tmp / f"{name}.policy"
    policy.write_text(policy_text)
    out, logs = tmp / name, tmp / f"{name}-logs"
    r = invoke("prenop", "--policy", policy, "-o", out, "--log-dir", logs, tree)
    assert r.exit_code == 0, r.output
    return out, logs


@pytest.fixture
def nopped(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(original tree, pre-nopped tree, its log directory): every site nopped, every record dropped."""
    out, logs = _prenop(tmp_path, "default nop\n", "out")
    assert sorted(p.relative_to(logs).as_posix() for p in logs.rglob("*.jsonl")) == [
        f"{n}.mcountrw.jsonl" for n in NAMES
    ]
    return tmp_path / "tree", out, logs


def _scan_json(*args: object) -> tuple[dict[str, dict[str, object]], str]:
    r = invoke("scan", "--format", "json", *args)
    assert r.exit_code == 0, r.output
    return {Path(i["path"]).name: i for i in json.loads(r.stdout)["images"]}, r.stderr


def _warnings(r: Result) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("mcountrw: warning: ")]


# -- finding the logs -------------------------------------------------------------------------------


def test_scan_with_log_dir_finds_the_sites_only_the_logs_know(nopped: tuple[Path, Path, Path]) -> None:
    _, out, logs = nopped
    images, stderr = _scan_json(out, "--log-dir", logs)
    assert stderr == ""
    for name, image in zip(("prof.ko", "patch.ko"), NAMES, strict=True):
        assert images[name]["log"] == str(logs / f"{image}.mcountrw.jsonl")
        sites = images[name]["sites"]
        assert isinstance(sites, list)
        assert {s["function"] for s in sites} == FUNCTIONS
        assert {(s["source"], s["state"], s["recorded"]) for s in sites} == {("log", "nopped", False)}
    # Without it, the nopped and unrecorded sites are invisible: the file alone shows none.
    images, _ = _scan_json(out)
    assert [(i["log"], i["sites"]) for i in images.values()] == [(None, [])] * 2


def test_scan_table_names_the_log_it_found_under_log_dir(nopped: tuple[Path, Path, Path]) -> None:
    _, out, logs = nopped
    r = invoke("scan", out / "prof.ko", "--log-dir", logs)
    assert r.exit_code == 0, r.output
    assert "6 sites (6 nopped->nopped, 6 of them from the patch log)" in unwrapped(r.stdout)
    assert f"LOG: 6 sites known only from the patch log {logs / 'prof.ko.mcountrw.jsonl'}" in unwrapped(r.stdout)


def test_audit_with_log_dir_counts_the_logs_sites(nopped: tuple[Path, Path, Path]) -> None:
    _, out, logs = nopped

    def from_log(*args: object) -> dict[str, int]:
        r = invoke("audit", "--format", "json", "--fail-on", "never", out, *args)
        assert r.exit_code == 0, r.output
        return {Path(i["path"]).name: i["counts"]["from_log"] for i in json.loads(r.stdout)["images"]}

    assert from_log("--log-dir", logs) == {"prof.ko": 6, "patch.ko": 6}
    assert from_log() == {"prof.ko": 0, "patch.ko": 0}


def test_policy_check_with_log_dir_counts_the_logs_sites(nopped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, logs = nopped
    policy = tmp_path / "check.policy"
    policy.write_text("default nop\nkeep leaf_add\n")
    r = invoke("policy", "check", policy, out, "--log-dir", logs)
    assert r.exit_code == 0, r.output
    lines = unwrapped(r.stdout).splitlines()  # the header is prose, wrapped
    # the patchable module, every record dropped, takes its generation from its log (it read "1 with no sites")
    assert lines[0].endswith("2 files (mprofile 1, patchable 1), 12 sites")
    assert lines[2].split() == ["2", "keep", "leaf_add", "2", "2", "leaf_add"]  # in both modules
    # Without the logs there is no site to match: the rule matches nothing (a finding).
    without = invoke("policy", "check", policy, out)
    assert unwrapped(without.stdout).splitlines()[0].endswith(", 0 sites") and without.exit_code == 1


def _changes(r: Result) -> dict[str, list[tuple[str, str]]]:
    assert r.exit_code == 1, r.output  # a difference
    return {
        Path(i["b"]).name: sorted((c["change"], c["function"]) for c in i["changes"])
        for i in json.loads(r.stdout)["images"]
    }


def test_diff_with_one_log_dir_gives_each_log_to_the_side_it_describes(nopped: tuple[Path, Path, Path]) -> None:
    tree, out, logs = nopped
    r = invoke("diff", "--format", "json", tree, out, "--log-dir", logs)
    # The original tree's files look in the same place and find logs of the other side: no warning.
    assert _warnings(r) == []
    changes = _changes(r)
    assert changes["prof.ko"] == sorted([("state", f) for f in FUNCTIONS] + [("record-removed", f) for f in FUNCTIONS])
    assert all(c != "removed" for c, _ in changes["patch.ko"]) and changes["patch.ko"]
    # Without the logs every nopped site reads as removed.
    assert {c for c, _ in _changes(invoke("diff", "--format", "json", tree, out))["prof.ko"]} == {"removed"}


def test_diff_with_two_log_dirs_reads_a_s_then_b_s(nopped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, logs = nopped
    kept, kept_logs = _prenop(tmp_path, "default keep\nnop fp_mix\n", "kept")
    r = invoke("diff", "--format", "json", out, kept, "--log-dir", logs, "--log-dir", kept_logs)
    assert _warnings(r) == []
    changes = _changes(r)
    # Every site is on both sides: five come back (enabled and recorded again), fp_mix stays nopped.
    assert changes["prof.ko"] == sorted(
        [("state", f) for f in FUNCTIONS - {"fp_mix"}] + [("record-added", f) for f in FUNCTIONS - {"fp_mix"}]
    )
    # Given the other way round, each side's directory holds logs of the other side's files.
    swapped = invoke("diff", "--format", "json", out, kept, "--log-dir", kept_logs, "--log-dir", logs)
    assert len(_warnings(swapped)) == 4 and all("ignored: its output has sha256" in w for w in _warnings(swapped))


def test_log_dir_names_match_prenops(tmp_path: Path) -> None:
    """One rule names a file in its tree: what prenop writes under --log-dir is where the read-only
    commands look, for files found in directories and files named themselves."""
    tree = _tree(tmp_path / "tree")
    paths = [tree, tree / "sub" / "patch.ko"]
    found, errors = expand_named([tree / "sub", tree / "prof.ko"])
    assert errors == [] and [f.name for f in found] == ["patch.ko", "prof.ko"]
    logs = tmp_path / "logs"
    written = {t.source: t.log for t in prenop_targets(paths[:1], output=tmp_path / "o", in_place=False, log_dir=logs)}
    looked = {f.path: logs / f"{f.name}.mcountrw.jsonl" for f in expand_named(paths[:1])[0]}
    assert written == looked and sorted(looked.values()) == [logs / f"{n}.mcountrw.jsonl" for n in NAMES]


# -- refusals and warnings --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["scan", "audit", "policy check", "diff"])
def test_log_with_log_dir_is_refused(command: str, nopped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tree, out, logs = nopped
    images = {"policy check": [tmp_path / "out.policy", out / "prof.ko"], "diff": [tree / "prof.ko", out / "prof.ko"]}
    log = logs / "prof.ko.mcountrw.jsonl"
    r = invoke(*command.split(), *images.get(command, [out / "prof.ko"]), "--log", log, "--log-dir", logs)
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert r.stderr == f"mcountrw: error: --log {log} and --log-dir {logs}: give one or the other, not both\n"


def test_a_log_dir_that_is_a_file_is_refused(nopped: tuple[Path, Path, Path]) -> None:
    _, out, logs = nopped
    r = invoke("scan", out, "--log-dir", logs / "prof.ko.mcountrw.jsonl")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == f"mcountrw: error: --log-dir {logs / 'prof.ko.mcountrw.jsonl'}: not a directory\n"


def test_a_log_dir_holding_no_log_is_one_warning_line(nopped: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, out, logs = nopped
    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("scan", "--format", "json", out, "--log-dir", empty)
    assert r.exit_code == 0
    assert r.stderr == (
        f"mcountrw: warning: --log-dir {empty}: holds no patch log of the 2 files given "
        f"(looked for {empty / 'prof.ko.mcountrw.jsonl'}, ...): no patch log read\n"
    )
    assert [i["sites"] for i in json.loads(r.stdout)["images"]] == [[], []]
    # The logs' directory named with a file of another name: the same warning, for one file.
    renamed = out / "renamed.ko"
    shutil.copy(out / "prof.ko", renamed)
    r = invoke("audit", renamed, "--log-dir", logs, "--fail-on", "never")
    assert r.exit_code == 0
    assert _warnings(r) == [
        f"mcountrw: warning: --log-dir {logs}: holds no patch log of the 1 file given "
        f"(looked for {logs / 'renamed.ko.mcountrw.jsonl'}): no patch log read"
    ]
    missing = tmp_path / "missing"
    r = invoke("policy", "check", tmp_path / "out.policy", out, "--log-dir", missing)
    assert _warnings(r) == [f"mcountrw: warning: --log-dir {missing}: no such directory: no patch log read"]


def test_a_log_under_log_dir_that_describes_another_file_is_ignored_as_beside(
    nopped: tuple[Path, Path, Path],
) -> None:
    tree, _, logs = nopped
    r = invoke("scan", "--format", "json", tree / "prof.ko", "--log-dir", logs)
    assert r.exit_code == 0
    [warning] = _warnings(r)
    assert warning.startswith(f"mcountrw: warning: {logs / 'prof.ko.mcountrw.jsonl'}: ignored: its output has sha256 ")
    assert warning.endswith("(changed since, or undone)")
    [image] = json.loads(r.stdout)["images"]
    assert image["log"] is None and {s["source"] for s in image["sites"]} == {"image"}
    # The same words as for the same log beside the file.
    shutil.copy(logs / "prof.ko.mcountrw.jsonl", tree / "prof.ko.mcountrw.jsonl")
    beside = _warnings(invoke("scan", tree / "prof.ko"))
    assert [w.replace(str(tree / "prof.ko.mcountrw.jsonl"), "LOG") for w in beside] == [
        warning.replace(str(logs / "prof.ko.mcountrw.jsonl"), "LOG")
    ]


def test_scan_of_a_tree_pre_nopped_in_place_finds_its_logs_under_log_dir(tmp_path: Path) -> None:
    tree, logs = _tree(tmp_path / "tree"), tmp_path / "logs"
    (tmp_path / "p.policy").write_text("default nop\n")
    r = invoke("prenop", "--policy", tmp_path / "p.policy", "--in-place", "--log-dir", logs, tree)
    assert r.exit_code == 0, r.output
    images, stderr = _scan_json(tree, "--log-dir", logs)
    assert stderr == "" and [i["log"] for i in images.values()] == [str(logs / f"{n}.mcountrw.jsonl") for n in NAMES]
    assert all(len(i["sites"]) == 6 for i in images.values())  # type: ignore[arg-type]
    # A module named itself is named by its file name, as prenop named it.
    images, _ = _scan_json(tree / "sub" / "patch.ko", "--log-dir", logs / "sub")
    assert images["patch.ko"]["log"] == str(logs / "sub" / "patch.ko.mcountrw.jsonl")


# -- prenop's own --verify and --undo with --log-dir -----------------------------------------------


def test_one_file_prenopped_to_a_new_name_has_its_log_under_that_name(tmp_path: Path) -> None:
    """`prenop -o OUT FILE --log-dir L` describes OUT: its log is L/OUT.mcountrw.jsonl, where
    --verify, --undo and scan of OUT look. It used to be named for FILE, and --undo of OUT said the
    nopped file already was its original."""
    src = tmp_path / "m.ko"
    shutil.copy(BIN / "prof-le.o", src)
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\n")
    out, logs = tmp_path / "renamed.ko", tmp_path / "L"
    assert invoke("prenop", "--policy", policy, "-o", out, "--log-dir", logs, src).exit_code == 0
    assert [p.name for p in logs.iterdir()] == ["renamed.ko.mcountrw.jsonl"]
    r = invoke("prenop", "--verify", "--log-dir", logs, out)
    assert r.exit_code == 0 and "verified      1             6" in r.output, r.output
    r = invoke("scan", "--format", "json", "--log-dir", logs, out)
    assert json.loads(r.stdout)["images"][0]["log"] == str(logs / "renamed.ko.mcountrw.jsonl")
    back = tmp_path / "back.ko"
    r = invoke("prenop", "--undo", "-o", back, "--log-dir", logs, out)
    assert r.exit_code == 0 and re.search(r"^  undone +1 +6$", r.output, re.M), r.output
    assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("mode", ["--undo", "--verify"])
def test_undo_or_verify_finding_no_log_at_all_is_nothing_to_do_and_writes_nothing(
    mode: str, nopped: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """Not one file has its log under a wrong --log-dir: before, --undo -o copied every nopped file
    as its own "original" and --verify passed them, exit 0."""
    _, out, _ = nopped
    back = tmp_path / "back"
    args = ("-o", back) if mode == "--undo" else ()
    r = invoke("prenop", mode, *args, "--log-dir", tmp_path / "wrong", out)
    verb = mode.removeprefix("--")
    assert r.exit_code == 1, r.output
    assert r.stderr.splitlines() == [
        f"mcountrw: nothing to do: no patch log found for any of the 2 files (first: prof.ko) where the run "
        f"looks: nothing to {verb} (a wrong --log-dir, a tree named otherwise than to the run that wrote the "
        "logs, which names them by the path below it, or never rewritten?)"
    ]
    assert not back.exists()


@pytest.mark.parametrize(("name", "generation"), [("patchable-le.o", "patchable"), ("ool-le.o", "ool")])
def test_a_file_whose_records_all_went_takes_its_generation_from_its_log(
    name: str, generation: str, tmp_path: Path
) -> None:
    """With every record dropped, a patchable or ool object shows only compiler nops: its contents
    cannot tell its generation (scan said `none` over 6 sites from the log); its log's sites can."""
    f = tmp_path / name
    shutil.copy(BIN / name, f)
    assert invoke("nop", f, "--in-place", "--drop-records").exit_code == 0
    (image,) = json.loads(invoke("scan", "--format", "json", f).stdout)["images"]
    assert image["generation"] == generation and len(image["sites"]) == 6
    assert {s["source"] for s in image["sites"]} == {"log"}
    (image,) = json.loads(invoke("scan", "--format", "json", f, "--log-dir", tmp_path / "none").stdout)["images"]
    assert image["generation"] is None and not image["sites"]  # without its log: nothing to tell by


def test_many_ignored_logs_are_counted_after_the_first_five(tmp_path: Path) -> None:
    """A tree undone since its prenop: scan --log-dir printed one warning per module (3,102 lines
    on Debian 6.1's tree) saying the same thing."""
    tree = tmp_path / "tree"
    tree.mkdir()
    nopped = tmp_path / "prog.nop"
    assert invoke("nop", BIN / "prof-le", "-o", nopped, "--drop-records").exit_code == 0
    for n in range(8):
        shutil.copy2(BIN / "prof-le", tree / f"p{n}")
        shutil.copy2(tmp_path / "prog.nop.mcountrw.jsonl", tree / f"p{n}.mcountrw.jsonl")
    result = invoke("scan", tree)
    warnings = _warnings(result)
    assert len(warnings) == 6 and all("ignored: its output has sha256" in w for w in warnings[:5]), warnings
    assert warnings[5] == "mcountrw: warning: and 3 more patch logs ignored"
