"""`mcountrw audit --format json` and `mcountrw diff --format json`: the contract other tools read.
:data:`SCHEMA` is the audit's JSON Schema (draft 2020-12) that docs/audit.md prints and the tests
validate every output against."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from rewriter import __version__
from rewriter.anomalies import Anomaly, AnomalyKind, Severity
from rewriter.audit import (
    Audit,
    Counts,
    GroupSummary,
    ImageAudit,
    SiteAudit,
    StubGap,
    roll_up,
    summarise,
)
from rewriter.diff import Diff, ImageDiff, Unpaired
from rewriter.flow import Verdict
from rewriter.generations import Generation
from rewriter.sites import Site
from rewriter.stubs import StubArea

FORMAT: Final = "mcountrw-audit/1"

_COUNT = {"type": "integer", "minimum": 0}
_TALLY = {"type": "object", "additionalProperties": _COUNT}
_SAFETY_COUNTS = {v.value: _COUNT for v in Verdict}  # safe, live, unknown, n/a (ool)
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_LINES = {"type": "array", "items": {"type": "string"}}
_STUB_GAP = {
    "type": ["object", "null"],
    "required": ["records", "reason"],
    "additionalProperties": False,
    "properties": {"records": _COUNT, "reason": {"type": "string"}},
}
_STUB_AREA = {
    "type": "object",
    "required": ["name", "address", "count", "stub_size", "used", "need", "covers"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "address": {"type": "integer"},
        "count": _COUNT,
        "stub_size": _COUNT,
        "used": _COUNT,
        "need": _COUNT,
        "covers": {"type": "boolean"},
    },
}

_GROUP = {
    "type": "object",
    "required": ["group", "images", "sites", "by_state", "mflr_nop_safety", "anomalies", "functions"],
    "additionalProperties": False,
    "properties": {
        "group": {"type": "string", "description": "directory under kernel/ (fs/ext4), or the file name"},
        "images": _COUNT,
        "sites": _COUNT,
        "by_state": _TALLY,
        "mflr_nop_safety": {
            "type": "object",
            "required": list(_SAFETY_COUNTS),
            "additionalProperties": False,
            "properties": _SAFETY_COUNTS,
        },
        "anomalies": {
            "type": "object",
            "required": [s.value for s in Severity],
            "additionalProperties": False,
            "properties": {s.value: _COUNT for s in Severity},
        },
        "functions": {
            "type": "object",
            "required": ["total", "with_sites"],
            "additionalProperties": False,
            "properties": {"total": _COUNT, "with_sites": _COUNT},
        },
    },
}

SCHEMA: Final[Mapping[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "mcountrw audit report",
    "type": "object",
    "required": ["format", "tool", "images", "groups", "totals", "errors"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "tool": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"const": "mcountrw"}, "version": {"type": "string"}},
        },
        "images": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "path",
                    "group",
                    "kind",
                    "endian",
                    "abi",
                    "generation",
                    "counts",
                    "ool_stubs",
                    "mflr_nop_safety",
                    "anomalies",
                ],
                "additionalProperties": False,
                "properties": {
                    "path": {"type": "string"},
                    "group": {"type": "string"},
                    "kind": {"enum": ["vmlinux", "module", "object", "executable"]},
                    "endian": {"enum": ["little", "big"]},
                    "abi": {"enum": ["elfv1", "elfv2"]},
                    "generation": {"enum": [*(g.value for g in Generation), None]},
                    "ool_stubs": {"type": "array", "items": _STUB_AREA},
                    "ool_stubs_unchecked": _STUB_GAP,
                    "counts": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": [
                            "sites",
                            "by_section",
                            "by_variant",
                            "by_state",
                            "recorded",
                            "unrecorded",
                            "functions",
                            "sites_outside_functions",
                            "init_text_sites",
                            "exit_text_sites",
                            "weak_bodies",
                            "records",
                        ],
                        "properties": {
                            "sites": _COUNT,
                            "by_section": _TALLY,
                            "by_variant": _TALLY,
                            "by_state": _TALLY,
                            "recorded": _COUNT,
                            "unrecorded": _COUNT,
                            "functions": {
                                "type": "object",
                                "required": ["total", "with_sites", "without_sites"],
                                "additionalProperties": False,
                                "properties": {"total": _COUNT, "with_sites": _COUNT, "without_sites": _COUNT},
                            },
                            "sites_outside_functions": _COUNT,
                            "init_text_sites": _COUNT,
                            "exit_text_sites": _COUNT,
                            "weak_bodies": _COUNT,
                            "from_log": _COUNT,
                            "records": {
                                "type": "object",
                                "required": ["count", "zeroed", "unmatched", "duplicates", "skipped"],
                                "additionalProperties": False,
                                "properties": {
                                    "count": _COUNT,
                                    "zeroed": _COUNT,
                                    "unmatched": _COUNT,
                                    "duplicates": _COUNT,
                                    "skipped": _COUNT,
                                },
                            },
                        },
                    },
                    "mflr_nop_safety": {
                        "type": "object",
                        "required": [*_SAFETY_COUNTS, "question", "sites"],
                        "additionalProperties": False,
                        "properties": {
                            **_SAFETY_COUNTS,
                            "question": {"type": "string"},
                            "sites": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["address", "section", "offset", "function", "verdict"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "address": _NULLABLE_INT,
                                        "section": {"type": "string"},
                                        "offset": _COUNT,
                                        "function": _NULLABLE_STR,
                                        "verdict": {"enum": [v.value for v in Verdict]},
                                        "reason": {"type": "string"},
                                        "evidence": _LINES,
                                    },
                                },
                            },
                        },
                    },
                    "anomalies": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["kind", "severity", "message", "address", "section", "offset", "function"],
                            "additionalProperties": False,
                            "properties": {
                                "kind": {"enum": [k.value for k in AnomalyKind]},
                                "severity": {"enum": [s.value for s in Severity]},
                                "message": {"type": "string"},
                                "address": _NULLABLE_INT,
                                "section": _NULLABLE_STR,
                                "offset": _NULLABLE_INT,
                                "file_offset": _NULLABLE_INT,
                                "function": _NULLABLE_STR,
                                "evidence": _LINES,
                            },
                        },
                    },
                },
            },
        },
        "groups": {"type": "array", "items": _GROUP},
        "totals": _GROUP,
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}
"""Addresses and offsets are integers; ``address`` is null in relocatable files (modules), where
``section`` + ``offset`` name the place. ``reason`` and ``evidence`` appear on live and unknown
verdicts only; an ``n/a`` verdict's reason is the image's ``question``. Image-wide anomalies (mixed
states, ABI) have null place fields."""


def group_json(g: GroupSummary) -> dict[str, Any]:
    return {
        "group": g.group,
        "images": g.images,
        "sites": g.sites,
        "by_state": g.by_state,
        "mflr_nop_safety": {v.value: g.safety[v.value] for v in Verdict},
        "anomalies": {s.value: g.anomalies[s.value] for s in Severity},
        "functions": {"total": g.functions, "with_sites": g.functions_with_sites},
    }


def stub_json(area: StubArea) -> dict[str, Any]:
    return {
        "name": area.name,
        "address": area.addr,
        "count": area.stub_count,
        "stub_size": area.stub_size,
        "used": area.used,
        "need": area.need,
        "covers": area.covers,
    }


def stub_gap_json(gap: StubGap | None) -> dict[str, Any] | None:
    """An ool vmlinux's records whose stub area was not found (ool-stubs-unchecked), else null."""
    return None if gap is None else {"records": gap.records, "reason": gap.reason}


def site_safety_json(sa: SiteAudit) -> dict[str, Any]:
    """One site's mflr-nop verdict; live and unknown ones say why and on what evidence."""
    row: dict[str, Any] = {
        "address": sa.site.addr,
        "section": sa.site.section,
        "offset": sa.site.offset,
        "function": sa.site.function,
        "verdict": sa.safety.verdict.value,
    }
    if sa.safety.verdict in (Verdict.LIVE, Verdict.UNKNOWN):
        row["reason"] = sa.safety.why.value if sa.safety.why else ""
        row["evidence"] = list(sa.evidence)
    return row


def counts_json(c: Counts) -> dict[str, Any]:
    return {
        "sites": c.sites,
        "by_section": c.by_section,
        "by_variant": c.by_variant,
        "by_state": c.by_state,
        "recorded": c.recorded,
        "unrecorded": c.unrecorded,
        "functions": {
            "total": c.functions,
            "with_sites": c.functions_with_sites,
            "without_sites": c.functions_without_sites,
        },
        "sites_outside_functions": c.sites_outside_functions,
        "init_text_sites": c.init_sites,
        "exit_text_sites": c.exit_sites,
        "weak_bodies": c.weak_bodies,
        "from_log": c.from_log,
        "records": {
            "count": c.records,
            "zeroed": c.zeroed_records,
            "unmatched": c.unmatched_records,
            "duplicates": c.duplicate_records,
            "skipped": c.skipped_records,
        },
    }


def anomaly_json(a: Anomaly) -> dict[str, Any]:
    return {
        "kind": a.kind.value,
        "severity": a.severity.value,
        "message": a.message,
        "address": a.addr,
        "section": a.section,
        "offset": a.offset,
        "file_offset": a.file_offset,
        "function": a.function,
        "evidence": list(a.evidence),
    }


def image_json(img: ImageAudit) -> dict[str, Any]:
    safety = img.safety_counts()
    sites = [site_safety_json(sa) for sa in img.sites]
    return {
        "path": str(img.path),
        "group": img.group,
        "kind": img.kind.value,
        "endian": img.endian,
        "abi": img.abi.value,
        "generation": img.generation.value if img.generation else None,
        "counts": counts_json(img.counts),
        "ool_stubs": [stub_json(a) for a in img.stubs],
        "ool_stubs_unchecked": stub_gap_json(img.stub_gap),
        "mflr_nop_safety": {**{v.value: safety[v] for v in Verdict}, "question": img.question, "sites": sites},
        "anomalies": [anomaly_json(a) for a in img.anomalies],
    }


def audit_json(audit: Audit) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "tool": {"name": "mcountrw", "version": __version__},
        "images": [image_json(img) for img in audit.images],
        "groups": [group_json(g) for g in roll_up(audit)],
        "totals": group_json(summarise(audit.images, "all")),
        "errors": list(audit.errors),
    }


def _site_ref(site: Site | None) -> dict[str, Any] | None:
    if site is None:
        return None
    return {
        "address": site.addr,
        "section": site.section,
        "offset": site.offset,
        "variant": site.variant.value,
        "state": site.state.value,
        "recorded": site.recorded,
    }


def _unpaired_json(alone: Unpaired, side: str) -> dict[str, Any]:
    generation = alone.generation.value if alone.generation else None
    return {"path": str(alone.path), "side": side, "generation": generation, "sites": alone.sites,
            "functions": alone.functions}  # fmt: skip


def diff_json(diff: Diff) -> dict[str, Any]:
    """``{"format": "mcountrw-diff/1", "images": [{"a", "b", "generations": [a, b], "builds": [a, b],
    "pairing",
    "unnamed": [a, b], "unchanged", "relocated", "records": [a, b], "zeroed": [a, b], "logs": [a, b], "boot": [a, b],
    "changes": [{"change", "function",
    "before", "after", "detail", "follows"}], "functions": {"common", "counts": {kind: n}, "changes": [{"change",
    "function", "before", "after"}]}}], "only_a", "only_b", "unpaired": [{"path", "side", "generation",
    "sites", "functions"}], "errors"}``; ``unpaired``: each file of ``only_a`` (side ``a``) and
    ``only_b`` (``b``), read alone; site ``before``/``after`` are
    null for added/removed sites; function ``before``/``after`` are generations or sections (null on
    the missing side). ``pairing`` is ``name``, or ``place`` when a side has sites but no function
    symbols (``unnamed``: which), and then ``functions`` is empty: not compared. ``unchanged``: paired
    sites with no change; when ``generations`` differ, those the same at boot (their words are each
    generation's own), which the markdown says so. ``builds``: byte order and ABI of each side
    (``little-endian elfv2``); when they differ, the pair has changed whatever its sites say.
    ``boot``: why ftrace is off after each side's boot (or its module not loaded), null when on;
    when they differ, the pair has changed (a record made twice changes no site's words).
    ``zeroed``: each side's zeroed record slots, ``logs``: the patch log read for each side (null:
    none); zeroed slots on a side with no log are most likely a rewrite's dropped records, whose
    nopped sites no scan finds: they read as removed (the markdown says so above the pair).
    ``follows``: for a site in no function (``function`` null: a weak body), the symbol it follows,
    kallsyms' name for it, by which it was paired (both sides of a pair follow the same one); null
    for a site in a function, or one with no symbol before it (paired by place)."""
    return {
        "format": "mcountrw-diff/1",
        "images": [_image_diff_json(d) for d in diff.images],
        "only_a": [str(u.path) for u in diff.only_a],
        "only_b": [str(u.path) for u in diff.only_b],
        "unpaired": [_unpaired_json(u, "a") for u in diff.only_a] + [_unpaired_json(u, "b") for u in diff.only_b],
        "errors": list(diff.errors),
    }


def _image_diff_json(d: ImageDiff) -> dict[str, Any]:
    """One pair of :func:`diff_json`."""
    return {
        "a": str(d.a),
        "b": str(d.b),
        "generations": [g.value if g is not None else None for g in d.generations],
        "builds": list(d.builds),
        "pairing": d.pairing.value,
        "unnamed": list(d.unnamed),
        "unchanged": d.unchanged,
        "relocated": d.relocated,
        "records": list(d.records),
        "zeroed": list(d.zeroed),
        "logs": [None if log is None else str(log) for log in d.logs],
        "boot": list(d.boot),
        "changes": [
            {
                "change": c.change.value,
                "function": c.function,
                "before": _site_ref(c.before),
                "after": _site_ref(c.after),
                "detail": c.detail,
                "follows": c.follows,
            }
            for c in d.changes
        ],
        "functions": {
            "common": d.common_functions,
            "counts": d.function_counts(),
            "changes": [
                {"change": f.change.value, "function": f.function, "before": f.before, "after": f.after}
                for f in d.functions
            ],
        },
    }
