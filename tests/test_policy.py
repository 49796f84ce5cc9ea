"""Policy files: parsing, ftrace-style patterns, last match wins, and `mcountrw policy check`."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from conftest import unwrapped
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from rewriter.cli import app
from rewriter.generations import Generation
from rewriter.locs import ZERO_ADJUSTED, Locs
from rewriter.policy import NOP_MEANS, PolicyError, SiteFacts, Tally, Verb, load, parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def test_last_matching_rule_decides_and_default_covers_the_rest() -> None:
    p = parse("default nop\nkeep vfs_*\nnop vfs_fsync*\nkeep vfs_fsync_range\n")
    fp = p.for_file(None)
    assert fp.decide("vfs_read", ".text") == (Verb.KEEP, 0)
    assert fp.decide("vfs_fsync", ".text") == (Verb.NOP, 1)
    assert fp.decide("vfs_fsync_range", ".text") == (Verb.KEEP, 2)
    assert fp.decide("schedule", ".text") == (Verb.NOP, None)


def test_mod_pattern_is_every_function_of_that_module_and_never_the_core_kernel() -> None:
    p = parse("default nop\nkeep :mod:ext4\n")
    assert p.for_file("ext4").decide("ext4_fill_super", ".text")[0] is Verb.KEEP
    assert p.for_file("ext4").decide(None, ".text")[0] is Verb.KEEP  # a site with no symbol
    assert p.for_file("jbd2").decide("ext4_fill_super", ".text")[0] is Verb.NOP
    assert p.for_file(None).decide("ext4_fill_super", ".text")[0] is Verb.NOP


def test_function_and_module_globs_combine_and_module_negation_excludes_one_module() -> None:
    p = parse("default keep\nnop *_test*:mod:ext4\nnop trace_*:mod:!ext4\n")
    assert p.for_file("ext4").decide("ext4_mb_test_x", ".text")[0] is Verb.NOP
    assert p.for_file("ext4").decide("trace_ext4_x", ".text")[0] is Verb.KEEP
    assert p.for_file("jbd2").decide("trace_jbd2_x", ".text")[0] is Verb.NOP
    assert p.for_file(None).decide("trace_x", ".text")[0] is Verb.NOP  # as ftrace: the core kernel is no ext4


def test_section_pattern_matches_the_section_of_the_call_site() -> None:
    p = parse("default keep\nnop :section:.init.text\nkeep do_one_initcall:section:.init.text\n")
    fp = p.for_file(None)
    assert fp.decide("start_kernel", ".init.text")[0] is Verb.NOP
    assert fp.decide("do_one_initcall", ".init.text")[0] is Verb.KEEP
    assert fp.decide("start_kernel", ".text")[0] is Verb.KEEP


def test_globs_match_whole_names_including_gcc_clone_suffixes() -> None:
    fp = parse("default nop\nkeep vfs_read\nkeep do_*\n").for_file(None)
    assert fp.decide("vfs_read", ".text")[0] is Verb.KEEP
    assert fp.decide("vfs_readv", ".text")[0] is Verb.NOP  # no implicit trailing *
    assert fp.decide("do_sys_open.constprop.0", ".text")[0] is Verb.KEEP


def test_comments_and_blank_lines_are_ignored() -> None:
    p = parse("# header\n\n  default nop   # trailing\nkeep foo#bar  # `#` inside a word is part of it\n")
    assert p.default is Verb.NOP and [str(r) for r in p.rules] == ["keep foo#bar"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keep foo\n", "no `default keep` or `default nop` line"),
        ("default nop\ndefault keep\n", ":2: a second `default` line"),
        ("default maybe\n", ":1: expected `default keep` or `default nop`"),
        ("default nop\ntrace foo\n", ":2: expected `keep PATTERN`"),
        ("default nop\nkeep foo bar\n", ":2: one pattern a line"),
        ("default nop\nkeep foo:filter:x\n", "unknown command `:filter:`"),
        ("default nop\nkeep foo:section:\n", "`:section:` needs a name"),
        ("default nop\nkeep foo:mod:2x\n", "write `[2]x`"),
        ("default nop\nkeep foo:mod:a:mod:b\n", "`:mod:` given twice"),
        ("default nop\nkeep foo:mod\n", "expected FUNCTION[:mod:MODULE][:section:SECTION]"),
    ],
)
def test_bad_policies_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(text, "p.policy")


def test_tally_counts_matches_and_decisions_and_warns_about_dead_rules() -> None:
    p = parse("default nop\nkeep vfs_*\nkeep vfs_read\nnop vfs_*\nkeep nothing_here\n", "p")
    t = Tally(p)
    t.add_file(None, [SiteFacts("vfs_read", ".text"), SiteFacts("vfs_write", ".text"), SiteFacts("schedule", ".text")])
    uses = t.uses()
    assert [(u.matched, u.decided) for u in uses] == [(2, 0), (1, 0), (2, 2), (0, 0), (1, 1)]
    assert uses[-1].rule is None and uses[-1].examples == ("schedule",)
    assert t.verdicts == {Verb.KEEP: 0, Verb.NOP: 3}
    warnings = t.warnings()
    assert any(w.startswith("p:2: `keep vfs_*` matches 2 sites, but later rules decide") for w in warnings)
    assert any(w.startswith("p:5: `keep nothing_here` matches nothing") for w in warnings)
    assert "p:3: `keep vfs_read` matches 1 site, but later rules decide it" in warnings  # not "1 sites"


def test_tally_says_which_kept_sites_the_kernel_cannot_trace_and_nops_per_generation() -> None:
    p = parse("default keep\nnop *_slow\n", "p")
    t = Tally(p)
    t.add_file(None, [SiteFacts("a", ".text"), SiteFacts(None, ".text", "weak-body"), SiteFacts("b_slow", ".text")],
               Generation.PATCHABLE)  # fmt: skip
    t.add_file("m", [SiteFacts("c_slow", ".text", "weak-body"), SiteFacts("d", ".text")], Generation.OOL)
    assert t.verdicts == {Verb.KEEP: 3, Verb.NOP: 2}
    # A nopped site is untraceable whatever it was; a kept one only if the kernel could trace it.
    assert t.kept_traceable == 2 and t.kept_untraceable == {"weak-body": 1}
    assert t.nopped == {Generation.PATCHABLE: 1, Generation.OOL: 1}
    assert t.generations == {Generation.PATCHABLE: 1, Generation.OOL: 1} and t.files == 2


def test_nop_means_dropping_the_record_where_sites_are_built_as_nops() -> None:
    """The kernel's init accepts only the compiler's words at a recorded place: on patchable and
    ool kernels, whose sites are built as nops, the words stay and only the record goes."""
    assert set(NOP_MEANS) == set(Generation)
    for g in (Generation.PATCHABLE, Generation.OOL):
        assert NOP_MEANS[g].startswith("the records are dropped; the ") and "stay" in NOP_MEANS[g]
    assert "become `nop; nop`" in NOP_MEANS[Generation.MPROFILE]


def test_example_policies_parse() -> None:
    files = sorted(EXAMPLES.glob("*.policy"))
    assert files
    for f in files:
        load(f)


NAMES = st.text(alphabet="ab_", min_size=0, max_size=4)
GLOBS = st.text(alphabet="ab_*?", min_size=1, max_size=4)


@given(
    rules=st.lists(st.tuples(st.sampled_from(["keep", "nop"]), GLOBS, st.none() | GLOBS), max_size=6),
    default=st.sampled_from(["keep", "nop"]),
    function=NAMES,
    module=st.none() | NAMES.filter(bool),
)
def test_decision_is_the_last_matching_rule_by_plain_fnmatch(rules, default, function, module) -> None:
    text = f"default {default}\n" + "".join(
        f"{verb} {glob}" + (f":mod:{mod}" if mod else "") + "\n" for verb, glob, mod in rules
    )
    expected = default
    for verb, glob, mod in rules:
        in_file = mod is None or (module is not None and fnmatch.fnmatchcase(module, mod))
        if in_file and fnmatch.fnmatchcase(function, glob):
            expected = verb
    assert parse(text).for_file(module).decide(function, ".text")[0].value == expected


# -- policy check on the corpus -------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.slow
def test_policy_check_counts_each_rule_over_the_corpus(corpus, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(EXAMPLES.parent)  # the policy named as docs/prenop.md names it: its header wraps there
    result = CliRunner().invoke(
        app, ["policy", "check", "examples/keep-core.policy", str(corpus.vmlinux), str(corpus.modules_dir)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "3127 files (mprofile 3104, 23 with no sites), 190967 sites" in unwrapped(result.output).splitlines()[0]
    row = next(line for line in lines if "keep do_one_initcall" in line).split()
    assert row[-3:] == ["2", "2", "do_one_initcall"]  # its own site and the weak body 6.1 lists under its name
    ext4 = next(line for line in lines if "keep :mod:ext4" in line).split()
    assert ext4[3:5] == ["851", "851"]
    assert (
        "result: keep 928 sites (928 traceable after boot or once loaded, 11 of them in init sections, traced until "
        "the kernel frees them), nop 190039 (untraceable: records dropped)" in unwrapped(result.output).splitlines()
    )
    assert (
        f"  nop on mprofile (190039 sites): {NOP_MEANS[Generation.MPROFILE]}" in unwrapped(result.output).splitlines()
    )
    # docs/prenop.md shows this run: it must stay what the command prints
    shown = (EXAMPLES.parent / "docs" / "prenop.md").read_text().split("On the corpus:\n\n```\n", 1)[1]
    assert shown.split("```", 1)[0] == result.output


@pytest.mark.corpus
@pytest.mark.slow
@pytest.mark.parametrize(("name", "generation"), [("6.12", Generation.PATCHABLE), ("7.2", Generation.OOL)])
def test_policy_check_on_patchable_and_ool_kernels(name: str, generation: Generation, tmp_path: Path) -> None:
    """Every site of the vmlinux is counted under its own function and section; keeping a weak
    body (in no function, the kernel disables it) is not counted as keeping it traceable."""
    from boot import counts, require_kernel

    from rewriter.elf.image import Image
    from rewriter.sites import scan

    kernel = require_kernel(name)
    policy = tmp_path / "p.policy"
    policy.write_text("default keep\nnop :section:.init.text\nkeep do_one_initcall\n")
    result = CliRunner().invoke(app, ["policy", "check", str(policy), str(kernel.vmlinux)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    sites = scan(Image.load(kernel.vmlinux)).sites
    init = sum(s.section == ".init.text" for s in sites)
    weak_kept = sum(not s.traceable and s.section != ".init.text" for s in sites)
    assert (len(sites), init) == (counts(name).records, counts(name).init_text) and weak_kept > 200
    assert f"1 file ({generation.value} 1), {len(sites)} sites" in unwrapped(result.output).splitlines()[0]
    assert next(line for line in lines if "nop :section:.init.text" in line).split()[3:5] == [f"{init}"] * 2
    assert next(line for line in lines if "keep do_one_initcall" in line).split()[3:6] == ["1", "1", "do_one_initcall"]
    kept = len(sites) - init
    assert (
        f"result: keep {kept} sites ({kept - weak_kept} traceable after boot; not traceable anyway: "
        f"{weak_kept} weak-body), nop {init} (untraceable: records dropped)"
    ) in unwrapped(result.output).splitlines()  # prose, wrapped at 80 columns
    said = unwrapped(result.output).splitlines()
    assert f"  nop on {generation.value} ({init} sites): {NOP_MEANS[generation]}" in said


@pytest.mark.corpus
def test_policy_check_warns_about_a_rule_that_matches_nothing(corpus, tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text("default nop\nkeep do_one_initcall\nkeep :mod:no_such_module\n")
    result = CliRunner().invoke(app, ["policy", "check", str(policy), str(corpus.vmlinux)])
    assert result.exit_code == 1
    assert f"warning: {policy}:3: `keep :mod:no_such_module` matches nothing" in unwrapped(result.output)


def test_policy_check_of_a_prenopped_tree_judges_kept_sites_as_prenop_would_leave_them(tmp_path: Path) -> None:
    """prenop applies a policy to the original: a site an earlier run nopped comes back with its
    record when the new policy keeps it. `policy check --log-dir` said such kept sites were "not
    traceable anyway: unrecorded"; and a module's sites are traceable once loaded, as scan says."""
    from conftest import FIXTURES

    tree, logs = tmp_path / "tree", tmp_path / "logs"
    tree.mkdir()
    (tree / "prog.ko").write_bytes((FIXTURES / "bin" / "prof-le.o").read_bytes())
    nop_all, keep_all = tmp_path / "nop.policy", tmp_path / "keep.policy"
    nop_all.write_text("default nop\n")
    keep_all.write_text("default keep\n")
    args = ["--in-place", "--log-dir", str(logs), str(tree)]
    done = CliRunner().invoke(app, ["prenop", "--policy", str(nop_all), *args])
    assert done.exit_code == 0, done.output
    check = CliRunner().invoke(app, ["policy", "check", str(keep_all), "--log-dir", str(logs), str(tree)])
    assert check.exit_code == 0, check.output
    assert "result: keep 6 sites (6 traceable after boot), nop 0" in check.output, check.output
    preview = CliRunner().invoke(app, ["prenop", "--policy", str(keep_all), "--dry-run", *args])
    assert preview.exit_code == 0 and "restore" in preview.output, preview.output


@pytest.mark.parametrize(
    ("loop", "refused"), [(Locs.ADJUSTS_FIRST, True), (Locs.CHECKS_TEXT, False), (Locs.UNKNOWN, False)]
)
def test_a_tally_warns_where_prenop_would_refuse_to_drop_records(loop: Locs, refused: bool) -> None:
    """Under the older ftrace_process_locs() loop a zeroed patchable record turns ftrace off, so
    prenop refuses to nop such a vmlinux's sites, and its modules'; the check says so first."""
    p = parse("default keep\nnop *_slow\n", "p")
    t = Tally(p)
    t.add_file("m", [SiteFacts("a_slow", ".text"), SiteFacts("b_slow", ".text")], Generation.PATCHABLE)
    t.add_file("kept", [SiteFacts("c", ".text")], Generation.PATCHABLE)  # nothing nopped: no refusal
    t.add_file("o", [SiteFacts("d_slow", ".text")], Generation.OOL)  # ool: a zeroed record is skipped
    t.add_file(None, [SiteFacts("e_slow", ".text")], Generation.PATCHABLE, loop)
    said = [w for w in t.warnings() if ZERO_ADJUSTED in w]
    if refused:
        assert said == [
            f"the vmlinux: nop on 1 site drops its record, but {ZERO_ADJUSTED}; prenop refuses it",
            f"1 module: nop on 2 sites drops their records, but the vmlinux's is the older loop ({ZERO_ADJUSTED}); "
            "prenop refuses it",
        ]
    else:
        assert said == []


def test_a_tally_of_modules_says_once_loaded() -> None:
    p = parse("default keep\n", "p")
    t = Tally(p)
    t.add_file("ext4", [SiteFacts("f", ".text")])
    assert t.when_traced == "once loaded"
    t.add_file(None, [SiteFacts("g", ".text")])
    assert t.when_traced == "after boot or once loaded"


def test_policy_check_says_when_generation_overrides_the_images() -> None:
    """scan and audit say that --generation overrode what an image says; policy check showed only
    rules that match nothing, read from images taken for another generation."""
    bins = Path(__file__).parent.parent / "fixtures" / "bin"
    policy = Path(__file__).parent.parent / "examples" / "keep-core.policy"
    args = ["policy", "check", str(policy), str(bins / "prof-le.o"), str(bins / "prof-be.o"), "--generation", "ool"]
    result = CliRunner().invoke(app, args)
    notes = [line for line in unwrapped(result.output).splitlines() if line.startswith("note: ")]
    assert notes == [
        f"note: {bins / 'prof-le.o'}: --generation ool overrides what the image says: mprofile (calls to _mcount) "
        "(and 1 more file)"
    ], result.output
    plain = CliRunner().invoke(app, ["policy", "check", str(policy), str(bins / "prof-le.o")])
    assert "note: " not in plain.output


def test_a_policy_file_that_starts_with_a_byte_order_mark_reads_as_without_it(tmp_path: Path) -> None:
    """Some editors start a UTF-8 file with U+FEFF: it was read as part of the first word
    (``expected `keep PATTERN` ... found `\\ufeffdefault nop```)."""
    text = "default nop\nkeep vfs_*\n"
    marked = tmp_path / "bom.policy"
    marked.write_bytes("\ufeff".encode() + text.encode())
    assert load(marked) == parse(text, str(marked))
