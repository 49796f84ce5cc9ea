"""`mcountrw audit` of images whose records were dropped on purpose (`nop --drop-records`,
`apply --drop-records`): what dropping leaves is not reported site by site, on every generation.

On mprofile and patchable a dropped site is `nop; nop` (nopped); on ool it is its one `nop`, the
state called disabled, exactly what the compiler built. Each dropped table entry is one
`zeroed-records` note that names the table it is in."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES
from typer.testing import CliRunner

from rewriter import audit
from rewriter.anomalies import AnomalyKind, Severity
from rewriter.cli import app
from rewriter.files import apply_file
from rewriter.ppc.table import build_table
from rewriter.rewrite import Options, Selection
from rewriter.states import SiteState

TABLE = build_table()
BIN = FIXTURES / "bin"


def _dropped(tmp_path: Path, name: str, target: SiteState) -> audit.ImageAudit:
    """``name`` rewritten to ``target`` with its records dropped, audited with its patch log
    (the sites only the log knows take part, as `mcountrw audit` finds the log beside the file)."""
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / name
    log = tmp_path / f"{name}.mcountrw.jsonl"
    apply_file(BIN / name, out, Selection(), Options(target, drop_records=True), log_path=log)
    got = audit.audit_one(out, "g", TABLE, logs={out: log})
    assert got.audit is not None, got.error
    return got.audit


@pytest.mark.parametrize(
    ("name", "state", "table"),
    [
        ("ool-le.o", "disabled", "__patchable_function_entries"),
        ("ool-be.o", "disabled", "__patchable_function_entries"),
        ("patchable-le.o", "nopped", "__patchable_function_entries"),
        ("prof-le.o", "nopped", "__mcount_loc"),
        ("prof-le", "nopped", "__mcount_loc"),
    ],
)
def test_nop_with_dropped_records_leaves_one_note_naming_its_table(
    tmp_path: Path, name: str, state: str, table: str
) -> None:
    got = _dropped(tmp_path, name, SiteState.NOPPED)
    n = got.counts.sites
    assert n and got.counts.unrecorded == n and got.counts.by_state == {state: n}
    drops = (AnomalyKind.UNRECORDED, AnomalyKind.ZEROED_RECORDS)  # (patchable-le.o has seeded others)
    assert [(a.kind, a.severity, a.message) for a in got.anomalies if a.kind in drops] == [
        (AnomalyKind.ZEROED_RECORDS, Severity.NOTE, f"{n} zeroed slots in {table}")
    ]


def test_unrecorded_disabled_is_a_note_on_mprofile_and_what_dropping_leaves_on_ool(tmp_path: Path) -> None:
    """The same state name, two meanings: mprofile's `mflr r0; nop` keeps a word the compiler did
    not leave there for a dropped site (a note per site); ool's `nop` is the nopped state."""
    prof = _dropped(tmp_path / "p", "prof-le.o", SiteState.DISABLED)
    unrecorded = [a for a in prof.anomalies if a.kind is AnomalyKind.UNRECORDED]
    assert prof.counts.by_state == {"disabled": prof.counts.sites}
    assert len(unrecorded) == prof.counts.sites and {a.severity for a in unrecorded} == {Severity.NOTE}
    ool = _dropped(tmp_path / "o", "ool-le.o", SiteState.DISABLED)
    assert ool.counts.by_state == {"disabled": ool.counts.sites}
    assert not [a for a in ool.anomalies if a.kind is AnomalyKind.UNRECORDED]


def test_unrecorded_call_to_mcount_is_still_a_warning() -> None:
    got = audit.audit_one(BIN / "anom-unrecorded", "g", TABLE).audit
    assert got is not None
    (warning,) = [a for a in got.anomalies if a.kind is AnomalyKind.UNRECORDED]
    assert warning.severity is Severity.WARNING and warning.function == "unrecorded_fn"
    assert "calls _mcount on every entry" in warning.message


def test_pre_nopped_ool_module_audit_lists_no_site(tmp_path: Path) -> None:
    """The command: the markdown report of a pre-nopped ool object has one anomaly line."""
    out = tmp_path / "ool-le.o"
    apply_file(BIN / "ool-le.o", out, Selection(), Options(SiteState.NOPPED, drop_records=True))
    result = CliRunner().invoke(app, ["audit", str(out), "--fail-on", "warning"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("- **")]
    n = _sites(BIN / "ool-le.o")
    assert lines == [f"- **note** `zeroed-records`: {n} zeroed slots in __patchable_function_entries"]


def _sites(path: Path) -> int:
    got = audit.audit_one(path, "g", TABLE).audit
    assert got is not None
    return got.counts.sites
