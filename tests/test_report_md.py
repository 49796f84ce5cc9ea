"""`mcountrw audit --format md`: the line that stands for the anomalies an image section does not
list says how many there are and of which kinds, and the kinds add up to that number. The HTML
report lists every anomaly, so it has no such line to get wrong."""

from __future__ import annotations

import dataclasses
import re

from conftest import FIXTURES

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
