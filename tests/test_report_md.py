"""`mcountrw audit --format md`: the line that stands for the anomalies an image section does not
list says how many there are and of which kinds, and the kinds add up to that number. The HTML
report lists every anomaly, so it has no such line to get wrong."""

from __future__ import annotations

import dataclasses
import re
import string
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

from conftest import FIXTURES, HOSTILE_FUNCTIONS, HOSTILE_SECTION, hostile_object, invoke
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from rewriter import audit
from rewriter.anomalies import Anomaly, AnomalyKind, Severity
from rewriter.ppc.table import build_table
from rewriter.report import html, md

WEAK = Anomaly(AnomalyKind.WEAK_BODY, Severity.NOTE, "no function symbol", addr=0x1000)
UNRECORDED = Anomaly(AnomalyKind.UNRECORDED, Severity.WARNING, "no record", addr=0x2000)


def _with_anomalies(*anomalies: Anomaly) -> audit.Audit:
    """The audit of a clean fixture, given ``anomalies`` instead of its own (it has none)."""
    outcome = audit.audit_one(FIXTURES / "bin" / "prof-le", "fixtures", build_table())
    assert outcome.audit is not None, outcome.error
    return audit.Audit((dataclasses.replace(outcome.audit, anomalies=anomalies),), ())


def _more_line(report: str) -> str:
    (line,) = [line for line in report.splitlines() if line.startswith("- ... ")]
    return line


def test_the_more_line_counts_only_the_anomalies_left_out() -> None:
    """40 weak-body notes then 20 unrecorded warnings: the 50 listed are the 40 notes and 10
    warnings, so the 10 left out are all warnings (it said ``(20 warning unrecorded, 40 note
    weak-body)``, every anomaly of the image, 60 for "10 more")."""
    report = md.audit_markdown(_with_anomalies(*[WEAK] * 40, *[UNRECORDED] * 20))
    assert report.count("`weak-body`") == 40 and report.count("`unrecorded`") == md.MAX_SHOWN - 40
    assert _more_line(report) == "- ... 10 more (10 warning unrecorded; --format json lists every one)"


def test_the_more_line_adds_up_to_its_number_with_several_kinds() -> None:
    report = md.audit_markdown(_with_anomalies(*[UNRECORDED] * 45, *[WEAK] * 10, *[UNRECORDED] * 3))
    line = _more_line(report)
    assert line == "- ... 8 more (5 note weak-body, 3 warning unrecorded; --format json lists every one)"
    more, kinds = re.fullmatch(r"- \.\.\. (\d+) more \((.*); --format json lists every one\)", line).groups()  # type: ignore[union-attr]
    assert int(more) == sum(int(part.split()[0]) for part in kinds.split(", "))


def test_no_more_line_when_every_anomaly_is_listed() -> None:
    report = md.audit_markdown(_with_anomalies(*[WEAK] * md.MAX_SHOWN))
    assert report.count("`weak-body`") == md.MAX_SHOWN and "- ... " not in report


def test_the_html_report_lists_every_anomaly() -> None:
    """No cap, hence no "N more" breakdown in the HTML: one row per anomaly."""
    page = html.audit_html(_with_anomalies(*[WEAK] * 40, *[UNRECORDED] * 20))
    assert page.count("<tr class='sev-note'>") == 40 and page.count("<tr class='sev-warning'>") == 20
    assert " more (" not in page


# -- names from a file, quoted as themselves -----------------------------------------------------


class _Rendered(HTMLParser):
    """What a Markdown renderer makes of a report: its tags, and its text as a reader sees it."""

    def __init__(self, markdown: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.chunks: list[str] = []
        self.feed(MarkdownIt("commonmark").enable("table").render(markdown))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


# Every tag the two reports write themselves; a name that is markup would add <script>, <b> or <a>.
_OWN_TAGS = {"h1", "h2", "h3", "h4", "p", "strong", "em", "code", "pre", "ul", "li"} | {
    "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


def test_names_from_the_file_read_as_themselves_in_the_audit_markdown(tmp_path: Path) -> None:
    """Function and section names holding Markdown and HTML (``<script>``, a backtick, ``*_[l](...)``,
    ``&amp;``, ``__strong__``) come out of a renderer as the names, with no tag of their own. Before,
    prose and tables printed them raw: live script tags, a link, bold text, ``&amp;`` shown as ``&``."""
    obj = hostile_object(tmp_path)
    result = invoke("audit", obj, "--fail-on", "never")
    assert result.exit_code == 0, result.output
    shown = _Rendered(result.stdout)
    assert shown.tags <= _OWN_TAGS, shown.tags - _OWN_TAGS
    for name in HOSTILE_FUNCTIONS:
        assert f"({name})" in shown.text  # each r0live warning names its function
    assert f"1 {HOSTILE_SECTION}" in shown.text  # the by-section tally, a table cell with a "|"


def test_names_from_the_file_read_as_themselves_in_the_diff_markdown(tmp_path: Path) -> None:
    """The same names in a diff's tables, and a path holding a backtick and a terminal escape
    sequence in its headings: printed escaped (``\\x1b``), never sent to the terminal, and the
    heading's code span not cut short by the backtick."""
    before = tmp_path / "a`\x1b]0;title\x07.o"
    hostile_object(tmp_path).rename(before)
    after = tmp_path / "b.o"
    assert invoke("nop", before, "-o", after, "--log", tmp_path / "b.log").exit_code == 0
    result = invoke("diff", before, after)
    assert result.exit_code == 1, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    shown = _Rendered(result.stdout)
    assert shown.tags <= _OWN_TAGS, shown.tags - _OWN_TAGS
    assert f"{before.parent}/a`\\x1b]0;title\\x07.o -> {after}" in shown.text
    for name in HOSTILE_FUNCTIONS:
        assert f"state{name}" in shown.text.replace("\n", "")  # the change, then the function cell


# ASCII punctuation, letters, digits, an inner space, and a character Markdown has no use for.
_NAMES = st.text(st.sampled_from(string.punctuation + "aZ09 é"), min_size=1, max_size=12)


@given(_NAMES.filter(lambda s: s == s.strip()))
def test_prose_quoting_a_name_renders_as_the_name(name: str) -> None:
    assert unescape(MarkdownIt("commonmark").renderInline(md.text(name))) == name


@given(_NAMES.filter(lambda s: s.strip() != ""))
def test_a_code_span_renders_as_the_name(name: str) -> None:
    assert unescape(MarkdownIt("commonmark").renderInline(md.code(name))) == f"<code>{name}</code>"


def test_a_name_is_a_code_span_whatever_backticks_it_holds() -> None:
    for name, span in (
        ("plain", "`plain`"),
        ("a`b", "``a`b``"),
        ("``x", "``` ``x ```"),
        ("y `", "`` y ` ``"),
    ):
        assert md.code(name) == span
        assert MarkdownIt("commonmark").renderInline(span) == f"<code>{name}</code>"
