"""`mcountrw scan` output: the JSON contract, CSV and a plain table.

JSON (other tools depend on it)::

    {"images": [{"path", "kind", "endian", "abi",
                 "sites": [{"address", "section", "offset", "function", "variant", "state", "recorded"}],
                 "records": {"count", "zeroed", "unmatched", "duplicates"},
                 "summary": {"sites", "by_section", "by_variant", "by_state", "recorded"}}],
     "errors": ["<path>: <problem>", ...]}

``address`` is null in relocatable files, where ``section`` + ``offset`` name the call slot.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from rewriter.sites import Scan, Site, summary

CSV_FIELDS = ("path", "address", "section", "offset", "function", "variant", "state", "recorded")


def site_json(site: Site) -> dict[str, Any]:
    return {
        "address": site.addr,
        "section": site.section,
        "offset": site.offset,
        "function": site.function,
        "variant": site.variant.value,
        "state": site.state.value,
        "recorded": site.recorded,
    }


def image_json(result: Scan, with_sites: bool = True) -> dict[str, Any]:
    s = summary(result.sites)
    return {
        "path": str(result.path),
        "kind": result.kind.value,
        "endian": result.endian,
        "abi": result.abi.value,
        "sites": [site_json(site) for site in result.sites] if with_sites else [],
        "records": {
            "count": result.records.count,
            "zeroed": result.records.zeroed,
            "unmatched": [p.text for p in result.records.unmatched],
            "duplicates": [p.text for p in result.records.duplicates],
        },
        "summary": {"sites": len(result.sites), **s},
    }


def scans_json(results: Iterable[Scan], errors: Sequence[str]) -> dict[str, Any]:
    return {"images": [image_json(r) for r in results], "errors": list(errors)}


def scans_json_text(results: Sequence[Scan], errors: Sequence[str]) -> str:
    """``json.dumps(scans_json(...), separators=(",", ":"))``, with the site lists formatted
    directly: 157,277 dicts for a module tree would cost more than scanning it (tested equal)."""
    return join_images_json([image_json_text(r) for r in results], errors)


def image_json_text(result: Scan) -> str:
    """One image of :func:`scans_json_text`. A batch scan makes it in the worker that scanned the
    file: a text pickles back to the parent far faster than a :class:`Scan`."""
    head = image_json(result, with_sites=False)
    text = json.dumps(head, separators=(",", ":"))
    return text.replace('"sites":[]', '"sites":[' + _sites_text(result.sites) + "]", 1)


def join_images_json(images: Sequence[str], errors: Sequence[str]) -> str:
    """The whole document from the texts of :func:`image_json_text`."""
    return '{"images":[' + ",".join(images) + '],"errors":' + json.dumps(list(errors), separators=(",", ":")) + "}"


def _sites_text(sites: Sequence[Site]) -> str:
    quoted: dict[str | None, str] = {}

    def q(text: str | None) -> str:
        s = quoted.get(text)
        if s is None:
            s = quoted[text] = json.dumps(text)
        return s

    parts = []
    for s in sites:
        addr = "null" if s.addr is None else str(s.addr)
        parts.append(
            f'{{"address":{addr},"section":{q(s.section)},"offset":{s.offset},"function":{q(s.function)},'
            f'"variant":"{s.variant.value}","state":"{s.state.value}","recorded":{"true" if s.recorded else "false"}}}'
        )
    return ",".join(parts)


def csv_text(results: Iterable[Scan]) -> str:
    return CSV_HEADER + "".join(csv_rows_text(r) for r in results)


CSV_HEADER = ",".join(CSV_FIELDS) + "\n"


def csv_rows_text(result: Scan) -> str:
    """One image's rows of :func:`csv_text`, without the header."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for s in result.sites:
        addr = f"{s.addr:#x}" if s.addr is not None else ""
        w.writerow(
            [
                result.path,
                addr,
                s.section,
                f"{s.offset:#x}",
                s.function or "",
                s.variant.value,
                s.state.value,
                int(s.recorded),
            ]
        )
    return out.getvalue()


def table_text(result: Scan, limit: int | None) -> str:
    return "".join(line + "\n" for line in table_lines(result, limit))


def table_lines(result: Scan, limit: int | None) -> list[str]:
    """A header line with the counts, then one aligned line per site (``limit`` lines at most)."""
    s = summary(result.sites)
    states = ", ".join(f"{v} {k}" for k, v in s["by_state"].items()) or "no sites"
    unmatched = len(result.records.unmatched)
    lines = [
        f"{result.path}: {result.kind.value}, {result.endian}-endian {result.abi.value}, "
        f"{len(result.sites)} sites ({states}); {result.records.count} records, "
        f"{s['recorded']['no']} sites unrecorded, {unmatched} records unmatched"
    ]
    shown = result.sites if limit is None else result.sites[:limit]
    for site in shown:
        lines.append(
            f"  {site.place_text:>20}  {site.section:<12} {site.variant.value:<12} {site.state.value:<9}"
            f" {'rec' if site.recorded else 'UNREC':<5} {site.function or '?'}"
        )
    if len(shown) < len(result.sites):
        lines.append(f"  ... {len(result.sites) - len(shown)} more (use --all, --format json or csv)")
    return lines
