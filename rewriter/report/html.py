"""`mcountrw audit --format html`: one self-contained page (no network, no external files).

Charts are inline SVG drawn here, so they show even with scripts off; the site table is data
(JSON in a ``<script type="application/json">``) that a small script pages, sorts and filters:
157,277 module sites as DOM rows would take a browser tens of seconds, 200 at a time take nothing.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple

from rewriter.audit import Audit, GroupSummary, ImageAudit, roll_up, summarise
from rewriter.flow import Verdict
from rewriter.prose import counted, printable
from rewriter.report.md import anomaly_text, safety_text, stub_gap_text, stub_text, weak_bodies_text
from rewriter.states import SiteState

STATE_COLOURS: Final[Mapping[str, str]] = {
    SiteState.ENABLED.value: "#2f6fb2",
    SiteState.DISABLED.value: "#7fb2e5",
    SiteState.NOPPED.value: "#9a9a9a",
    SiteState.GUARDED.value: "#6bb56b",
    SiteState.ARMED.value: "#e0a030",
    SiteState.BROKEN.value: "#d62728",
    SiteState.UNKNOWN.value: "#8c564b",
}
VERDICT_COLOURS: Final[Mapping[str, str]] = {
    Verdict.SAFE.value: "#2ca02c",
    Verdict.LIVE.value: "#d62728",
    Verdict.UNKNOWN.value: "#ff9f1c",
    Verdict.N_A.value: "#b0b0b0",
}
MAX_BARS = 25
MAX_IMAGE_ROWS = 50
SITE_COLUMNS: Final = (
    "image", "place", "section", "function", "variant", "state", "recorded", "traceable", "stub", "verdict", "reason",
)  # fmt: skip


class Bar(NamedTuple):
    label: str
    parts: Mapping[str, int]  # key -> count, drawn in the order of the colour table


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _file(img: ImageAudit) -> str:
    """An image's file name for the page: escaped as every report escapes names (a name that is not
    UTF-8 or holds a control character shows its bytes as ``\\xff``), then for HTML."""
    return _esc(printable(img.path.name))


def bar_chart(chart_id: str, title: str, bars: Sequence[Bar], colours: Mapping[str, str]) -> str:
    """Horizontal stacked bars with a legend; every segment has a <title> tooltip."""
    label_w, bar_w, row_h, top = 280, 600, 22, 34
    height = top + row_h * len(bars) + 30
    peak = max((sum(b.parts.values()) for b in bars), default=0) or 1
    out = [
        f'<svg id="{chart_id}" class="chart" role="img" aria-label="{_esc(title)}" width="{label_w + bar_w + 90}"'
        f' height="{height}" viewBox="0 0 {label_w + bar_w + 90} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="0" y="16" class="title">{_esc(title)}</text>',
    ]
    x = 0
    for key, colour in colours.items():
        out.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14}" y="31" class="legend">{_esc(key)}</text>')
        x += 24 + 8 * len(key)
    for n, bar in enumerate(bars):
        y = top + 8 + n * row_h
        total = sum(bar.parts.values())
        out.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="label">{_esc(bar.label)}</text>')
        x0 = float(label_w)
        for key, colour in colours.items():
            count = bar.parts.get(key, 0)
            if not count:
                continue
            w = max(bar_w * count / peak, 1.0)
            out.append(
                f'<rect class="seg" data-key="{_esc(key)}" x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}"'
                f' fill="{colour}"><title>{_esc(bar.label)}: {count} {_esc(key)}</title></rect>'
            )
            x0 += w
        out.append(f'<text x="{x0 + 4:.1f}" y="{y + 14}" class="value">{total}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _state_bars(audit: Audit, groups: Sequence[GroupSummary]) -> tuple[str, list[Bar]]:
    if len(groups) > 1:
        return "Sites per subsystem, by state", [Bar(g.group, g.by_state) for g in groups[:MAX_BARS]]
    by_section: dict[str, dict[str, int]] = {}
    for img in audit.images:
        for sa in img.sites:
            row = by_section.setdefault(sa.site.section, {})
            row[sa.site.state.value] = row.get(sa.site.state.value, 0) + 1
    bars = sorted((Bar(sec, parts) for sec, parts in by_section.items()), key=lambda b: -sum(b.parts.values()))
    return "Sites per section, by state", bars[:MAX_BARS]


def _safety_bars(groups: Sequence[GroupSummary], total: GroupSummary) -> list[Bar]:
    """One bar for everything, or one per group: an 'all' bar beside them would dwarf them."""
    if len(groups) > 1:
        return [Bar(g.group, g.safety) for g in groups[:MAX_BARS]]
    return [Bar("all", total.safety)]


def _site_rows(images: Sequence[ImageAudit]) -> list[list[str]]:
    rows = []
    for img in images:
        name = printable(img.path.name)
        for sa in img.sites:
            s = sa.site
            rows.append(
                [
                    name,
                    s.place_text,
                    s.section,
                    s.function or "",
                    s.variant.value,
                    s.state.value,
                    "yes" if s.recorded else "no",
                    "yes" if sa.traceable else "no",
                    s.stub or "",
                    sa.safety.verdict.value,
                    sa.safety.why.value if sa.safety.why else "",
                ]
            )
    return rows


def _image_table(images: Sequence[ImageAudit]) -> str:
    """Per image: its generation, what the safety verdict asks there, and (ool) its stub areas."""
    rows = []
    for img in images[:MAX_IMAGE_ROWS]:
        areas = [f"{_esc(a.name)}: {_esc(stub_text(a))}" for a in img.stubs]
        gap = [] if img.stub_gap is None else [_esc(stub_gap_text(img.stub_gap))]
        stubs = "<br>".join(areas + gap)
        rows.append(
            f"<tr><td>{_file(img)}</td><td>{_esc(img.generation.value if img.generation else '')}</td>"
            f"<td>{img.counts.sites}</td><td>{_esc(weak_bodies_text(img))}</td><td>{_esc(img.question)}</td>"
            f"<td class='ev'>{stubs}</td></tr>"
        )
    head = (
        "<tr><th>image</th><th>generation</th><th>sites</th><th>recorded sites in weak-function bodies</th>"
        "<th>mflr-nop question</th><th>ool stubs</th></tr>"
    )
    more = f"<p>... and {len(images) - MAX_IMAGE_ROWS} more images.</p>" if len(images) > MAX_IMAGE_ROWS else ""
    return f"<table id='images'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _anomaly_table(images: Sequence[ImageAudit]) -> str:
    rows = []
    for img in images:
        for a in img.anomalies:
            evidence = "<br>".join(_esc(line) for line in a.evidence)
            rows.append(
                f"<tr class='sev-{a.severity.value}'><td>{_esc(a.severity.value)}</td><td>{_esc(a.kind.value)}</td>"
                f"<td>{_file(img)}</td><td>{_esc(a.place)}</td><td>{_esc(a.function or '')}</td>"
                f"<td>{_esc(a.message)}<div class='ev'>{evidence}</div></td></tr>"
            )
    if not rows:
        return "<p id='no-anomalies'>No anomalies.</p>"
    head = "<tr><th>severity</th><th>kind</th><th>image</th><th>place</th><th>function</th><th>message</th></tr>"
    return f"<table id='anomalies'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


_STYLE: Final = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
.chart text { font: 12px system-ui, sans-serif; fill: #222; } .chart .title { font-weight: 600; font-size: 14px; }
table { border-collapse: collapse; margin-top: 8px; } td, th { border: 1px solid #ccc; padding: 3px 6px; }
th { background: #eef; cursor: pointer; user-select: none; text-align: left; }
tr.sev-error td:first-child { color: #b00; font-weight: 600; } tr.sev-warning td:first-child { color: #a60; }
.ev { font-family: monospace; font-size: 12px; color: #555; white-space: pre; }
#controls { margin: 8px 0; } #controls input { width: 320px; }
td.verdict-live { color: #b00; font-weight: 600; } td.verdict-unknown { color: #a60; }
"""

_SCRIPT: Final = """
(function () {
  const cols = JSON.parse(document.getElementById('site-columns').textContent);
  const all = JSON.parse(document.getElementById('site-data').textContent);
  const PAGE = 200;
  let rows = all, page = 0, query = '', sortCol = -1, sortDir = 1;
  const body = document.querySelector('#sites tbody');
  const info = document.getElementById('page-info');
  function render() {
    body.textContent = '';
    const start = page * PAGE;
    for (const r of rows.slice(start, start + PAGE)) {
      const tr = document.createElement('tr');
      r.forEach(function (v, i) {
        const td = document.createElement('td');
        td.textContent = v;
        if (cols[i] === 'verdict') td.className = 'verdict-' + v;
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    info.textContent = rows.length + ' sites, page ' + (page + 1) + ' of ' + pages;
  }
  // Hex numbers compare by value: '.text+0x4' before '.text+0x2c', as the offsets are.
  function sortKey(v) {
    return String(v).replace(/0x([0-9a-f]+)/gi, function (m, h) { return '0x' + h.padStart(16, '0'); });
  }
  // The rows shown: the filter's matches, in the order of the column sorted last (a new filter
  // keeps that order; a stable sort keeps the report's order among equal keys).
  function select() {
    rows = query ? all.filter(function (r) { return r.join(' ').toLowerCase().includes(query); }) : all;
    if (sortCol >= 0) {
      const keyed = rows.map(function (r) { return [sortKey(r[sortCol]), r]; });
      keyed.sort(function (a, b) { return (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0) * sortDir; });
      rows = keyed.map(function (k) { return k[1]; });
    }
    page = 0; render();
  }
  document.querySelectorAll('#sites th').forEach(function (th, i) {
    th.addEventListener('click', function () {
      sortDir = sortCol === i ? -sortDir : 1; sortCol = i; select();
    });
  });
  document.getElementById('filter').addEventListener('input', function (e) {
    query = e.target.value.toLowerCase(); select();
  });
  document.getElementById('prev').addEventListener('click', function () { if (page > 0) { page--; render(); } });
  document.getElementById('next').addEventListener('click', function () {
    if ((page + 1) * PAGE < rows.length) { page++; render(); }
  });
  render();
  document.body.setAttribute('data-rendered', 'yes');
})();
"""


def _unread(errors: Sequence[str]) -> str:
    """The summary's word on the files that could not be read: a tree's audit with one left out
    must not read as a clean audit of the whole tree."""
    return f"; <strong>{counted(len(errors), 'file')} not read</strong> (see Errors)" if errors else ""


def _errors(errors: Sequence[str]) -> list[str]:
    if not errors:
        return []
    items = "".join(f"<li>{_esc(e)}</li>" for e in errors)
    return ["<h2>Errors</h2>", f"<ul id='errors'>{items}</ul>"]


_JSON_IN_HTML = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _json_script(element_id: str, value: object) -> str:
    # No "<" at all in the element: "</script" would end it, and "<!--" followed by "<script"
    # (a function can be named that) puts the parser in a state where "</script>" does not. JSON
    # reads "\u003c" as "<"; ">" and "&" likewise, so no part of the text is markup.
    text = json.dumps(value, separators=(",", ":")).translate(_JSON_IN_HTML)
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def audit_html(audit: Audit) -> str:
    groups = roll_up(audit)
    total = summarise(audit.images, "all")
    state_title, state_bars = _state_bars(audit, groups)
    a = total.anomalies
    head = "".join(f"<th>{_esc(c)}</th>" for c in SITE_COLUMNS)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>mcountrw audit</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>mcountrw audit</h1>",
        f"<p id='summary'>{counted(total.images, 'image')}, {counted(total.sites, 'site')}{_unread(audit.errors)}."
        " mflr-nop safety: "
        f"{_esc(safety_text(total.safety))}. Anomalies: {anomaly_text(a)}.</p>",
        "<h2>Sites</h2>",
        bar_chart("state-chart", state_title, state_bars, STATE_COLOURS),
        "<h2>mflr-nop safety</h2>",
        bar_chart(
            "safety-chart",
            "Sites by verdict" + (" (largest groups)" if len(groups) > 1 else ""),
            _safety_bars(groups, total),
            VERDICT_COLOURS,
        ),
        "<h2>Images</h2>",
        _image_table(audit.images),
        *_errors(audit.errors),
        "<h2>Anomalies</h2>",
        _anomaly_table(audit.images),
        "<h2>All sites</h2>",
        "<div id='controls'><input id='filter' placeholder='filter (function, state, verdict...)'>"
        " <button id='prev'>&lt;</button> <button id='next'>&gt;</button> <span id='page-info'></span></div>",
        f"<table id='sites'><thead><tr>{head}</tr></thead><tbody></tbody></table>",
        _json_script("site-columns", list(SITE_COLUMNS)),
        _json_script("site-data", _site_rows(audit.images)),
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
