"""Review h19-H: policy check, prenop and diff text as a kernel developer reads them at an
80-column terminal, and what prenop --verify and verify say of a file that cannot be read."""

from __future__ import annotations

from pathlib import Path

from boot import require_kernel
from conftest import invoke, unwrapped

POLICY = Path(__file__).parent.parent / "examples" / "keep-core.policy"


def _past_80(text: str, *whole: str) -> list[str]:
    """The lines of ``text`` longer than 80 columns but those that hold one of ``whole`` (a path,
    which wrapping keeps whole), its label and one word more at most: a wrapped line's first piece."""
    long = [line for line in text.splitlines() if len(line) > 80]
    return [line for line in long if not any(w in line and len(line.replace(w, "").split()) <= 3 for w in whole)]


# -- 1. policy check ----------------------------------------------------------------------------------


def test_policy_checks_header_note_and_warnings_fit_80_columns(tmp_path: Path) -> None:
    """The 'policy PATH: default ..., N files (...), M sites' header ran to column 114 on 6.12's
    tree (more with an absolute path), its note: and warning: lines too; they wrap as the result:
    line does, the policy's path kept whole on the first line."""
    nls = require_kernel("6.12").modules_dir / "fs" / "nls"
    policy = tmp_path / ("a-policy-named-at-some-length-" * 2 + ".policy")
    policy.write_text(POLICY.read_text() + "keep nosuch_fn\n")
    result = invoke("policy", "check", policy, nls, "--generation", "patchable")
    assert result.exit_code == 1, result.output
    assert _past_80(result.output, str(policy)) == [], result.output
    lines = unwrapped(result.output).splitlines()
    assert lines[0].startswith(f"policy {policy}: default nop, 4 rules; ") and lines[0].endswith(" sites"), lines[0]
    assert result.output.splitlines()[0].startswith(f"policy {policy}: ")
    assert f"warning: {policy}:12: `keep nosuch_fn` matches nothing" in lines, result.output
    assert any(line.startswith("note: nop on ") and line.endswith("(prenop warns of it)") for line in lines)


# -- 3. a corrupt module its log describes ---------------------------------------------------------


def test_a_corrupt_module_its_log_describes_is_a_mismatch_for_verify_and_prenop_verify(tmp_path: Path) -> None:
    """prenop --verify of a tree with one .ko.xz cut short said 'failed' (exit 2, bad input) where
    `verify ORIGINAL F` said MISMATCH (exit 1). The log says what the file should be, and the log's
    output reads whole: both say MISMATCH, exit 1, in the same words. ORIGINAL cut short is bad
    input (exit 2): nothing can be checked against it."""
    nls = require_kernel("6.12").modules_dir / "fs" / "nls"
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for name in ("nls_cp437.ko.xz", "nls_iso8859-1.ko.xz"):
        (src / name).write_bytes((nls / name).read_bytes())
    made = invoke("prenop", "--policy", POLICY, "--strip-signature", "-o", out, src)
    assert made.exit_code == 0, made.output
    cut = out / "nls_cp437.ko.xz"
    cut.write_bytes(cut.read_bytes()[:1000])
    log = out / "nls_cp437.ko.xz.mcountrw.jsonl"
    said = f"{cut}: truncated xz data: not the output of {log}, which reads whole"
    single = invoke("verify", src / "nls_cp437.ko.xz", cut)
    assert single.exit_code == 1 and said in single.output, single.output
    for extra in ([], ["--against", src]):
        tree = invoke("prenop", "--verify", *extra, out)
        assert tree.exit_code == 1, tree.output
        assert "mismatch      1" in tree.output and "verified      1" in tree.output, tree.output
        assert "failed" not in tree.output and said in tree.output, tree.output
    original = tmp_path / "cut-original.ko.xz"
    original.write_bytes((src / "nls_iso8859-1.ko.xz").read_bytes()[:1000])
    bad = invoke("verify", original, out / "nls_iso8859-1.ko.xz")
    assert bad.exit_code == 2 and f"mcountrw: error: {original}: truncated xz data" in bad.output, bad.output


# -- 2. prenop's words ----------------------------------------------------------------------------------


def test_a_dry_runs_warning_says_records_would_be_dropped(tmp_path: Path) -> None:
    """prenop --dry-run over patchable modules with no vmlinux said '153 records dropped from 51
    patchable modules ...' beside 'module signatures: 51 would be stripped' and 'nothing written':
    it drops nothing. It says they would be dropped; the run that drops them says 'dropped'."""
    nls = require_kernel("6.12").modules_dir / "fs" / "nls"
    src = tmp_path / "src"
    src.mkdir()
    for name in ("nls_cp437.ko.xz", "nls_iso8859-1.ko.xz"):
        (src / name).write_bytes((nls / name).read_bytes())
    args = ("prenop", "--policy", POLICY, "--strip-signature")
    dry = invoke(*args, "--dry-run", src)
    assert dry.exit_code == 0, dry.output
    assert "warning: 6 records would be dropped from 2 patchable modules with no patchable vmlinux" in unwrapped(
        dry.stdout
    ), dry.output
    assert "records dropped" not in dry.stdout and not any(src.glob("*.mcountrw.jsonl"))
    ran = invoke(*args, "-o", tmp_path / "out", src)
    assert ran.exit_code == 0 and "warning: 6 records dropped from 2 patchable modules" in ran.stdout, ran.output


# -- 4. diff's prose -----------------------------------------------------------------------------------


def test_diffs_generation_and_sites_lines_wrap_at_80_columns() -> None:
    """diff of 6.1 against 6.12 said 'Generation mprofile -> patchable. Function names with sites
    ...' in one line of 185 columns and 'Sites: ...' in 150; both are prose, wrapped as scan's is,
    with the same words (table rows and JSON are not wrapped)."""
    a = next((require_kernel("6.1").modules_dir / "fs" / "nls").glob("nls_cp437.ko*"))
    b = require_kernel("6.12").modules_dir / "fs" / "nls" / "nls_cp437.ko.xz"
    result = invoke("diff", a, b)
    assert result.exit_code == 1, result.output
    prose = [line for line in unwrapped(result.output).splitlines() if line.startswith(("Generation ", "Sites: "))]
    assert len(prose) == 2 and prose[0].endswith("4 changed generation, 0 moved between sections."), prose
    assert prose[1].startswith("Sites: no changes; 3 the same at boot") and prose[1].endswith("records 3 -> 3."), prose
    printed = [line for line in result.output.splitlines() if line.startswith(("Generation ", "Sites: ", "    "))]
    assert len(printed) > 2 and all(len(line) <= 80 for line in printed), result.output
