"""`mcountrw audit --format md` and `mcountrw diff`: Markdown for people.

A summary line, the roll-up by subsystem, then a section per image that has something to say
(anomalies, or sites the safety walk did not prove safe). With few images every image gets its
section, so the counts of a single vmlinux are always shown. A diff (:func:`diff_markdown`) is a
headline and a section per image pair: its function changes, then its site changes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from rewriter.anomalies import Anomaly, Severity
from rewriter.audit import Audit, GroupSummary, ImageAudit, StubGap, roll_up, summarise
from rewriter.diff import Diff, FunctionChangeKind, ImageDiff, Pairing, SiteChange, Unpaired
from rewriter.elf.image import Kind
from rewriter.flow import Verdict
from rewriter.generations import Generation
from rewriter.prose import counted, printable, wrapped
from rewriter.stubs import StubArea

DETAIL_ALL_BELOW = 20  # images: show every image's section when there are fewer than this
MAX_GROUPS = 40
MAX_SHOWN = 50  # anomalies or verdicts listed per image


def percent(part: int, whole: int) -> str:
    """``100%`` and ``0%`` exactly when they are; otherwise three decimals that never round to
    either (33,689 of 33,690 is ``99.997%``, and one short of a million ``99.999%``, not 100). No
    space before the sign, as English and the kernel's own messages write it; every percentage of
    a report is made here."""
    if not whole:
        return "n/a"
    if part in (0, whole):
        return f"{100 * part // whole}%"
    return f"{min(max(100 * part / whole, 0.001), 99.999):.3f}%"


def code(name: str) -> str:
    """``name`` (a path, a section or symbol name) as a Markdown code span, in which nothing is
    markup: a name from a file may hold ``*``, ``<`` or ``[``. The fence is one backtick longer
    than the longest run in the name, and a name that starts or ends with a backtick or a space is
    padded with one space each side, which the span drops again (CommonMark, code spans)."""
    name = printable(name) or " "
    fence = "`" * (max(map(len, re.findall("`+", name)), default=0) + 1)
    pad = " " if {name[0], name[-1]} & {"`", " "} else ""
    return f"{fence}{pad}{name}{pad}{fence}"


# What could start markup in prose: emphasis, a link, a code span, raw HTML or an entity, a GFM
# strikethrough. A run of underscores followed by a letter or digit can neither close emphasis
# nor, with no closer, open it (CommonMark's flanking rules): a kernel name's ``__`` stays as written.
# A backslash escapes only the ASCII punctuation after it: the ``\\x1b`` of an unprintable
# character (prose.printable) reads as written, unescaped.
_MARKUP = re.compile(r"\\(?=[!-/:-@\[-`{-~])|[`*\[\]<>&~]|_+(?!\w)")


def text(prose: str) -> str:
    """``prose`` that quotes names from a file (a message, a place, a function) as Markdown that
    reads as itself: a backslash before each character that could start markup."""
    return _MARKUP.sub(lambda m: "".join("\\" + c for c in m.group()), printable(prose))


def _tally(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {text(k)}" for k, n in counts.items()) or "none"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def safety_text(safety: Mapping[str, int]) -> str:
    """``N safe, N live, N unknown[, N n/a] (P% decided)``: decided among the sites the question
    applies to (ool sites are n/a)."""
    na = safety[Verdict.N_A.value]
    asked = safety["safe"] + safety["live"] + safety["unknown"]
    text = f"{safety['safe']} safe, {safety['live']} live, {safety['unknown']} unknown"
    text += f", {na} n/a" if na else ""
    return f"{text} ({percent(safety['safe'] + safety['live'], asked)} decided)" if asked else text


def anomaly_text(anomalies: Mapping[str, int]) -> str:
    """``N errors, N warnings, N notes``."""
    return ", ".join(counted(anomalies[s.value], s.value) for s in (Severity.ERROR, Severity.WARNING, Severity.NOTE))


def _headline(total: GroupSummary) -> list[str]:
    return [
        f"**{counted(total.images, 'image')}, {counted(total.sites, 'site')}** ({_tally(total.by_state)}).",
        "",
        f"**mflr-nop safety:** {safety_text(total.safety)}.",
        "",
        f"**Anomalies:** {anomaly_text(total.anomalies)}.",
    ]


def _groups(groups: Sequence[GroupSummary]) -> list[str]:
    rows = [
        (
            text(g.group),
            g.images,
            g.sites,
            _tally(g.by_state),
            g.safety["safe"],
            g.safety["live"],
            g.safety["unknown"],
            g.safety[Verdict.N_A.value],
            g.anomalies["error"],
            g.anomalies["warning"],
            g.anomalies["note"],
        )
        for g in groups[:MAX_GROUPS]
    ]
    header = ("group", "images", "sites", "states", "safe", "live", "unknown", "n/a", "errors", "warnings", "notes")
    out = ["## By subsystem", "", *_table(header, rows)]
    if len(groups) > MAX_GROUPS:
        out += ["", f"... and {len(groups) - MAX_GROUPS} smaller groups (see --format json)."]
    return out


def _counts_rows(img: ImageAudit) -> list[tuple[str, object]]:
    c = img.counts
    safety = {v.value: n for v, n in img.safety_counts().items()}
    rows: list[tuple[str, object]] = [
        ("generation", img.generation.value if img.generation else "none (no sites or records)"),
        ("sites", c.sites),
        ("by section", _tally(c.by_section)),
        ("by variant", _tally(c.by_variant)),
        ("by state", _tally(c.by_state)),
        ("recorded / unrecorded", f"{c.recorded} / {c.unrecorded}"),
        *([("sites known only from the patch log", c.from_log)] if c.from_log else []),
        ("functions with / without sites", f"{c.functions_with_sites} / {c.functions_without_sites}"),
        ("sites outside any function symbol", c.sites_outside_functions),
        (WEAK_BODIES, weak_bodies_text(img)),
        ("sites in .init.text / .exit.text", f"{c.init_sites} / {c.exit_sites}"),
        (
            "records (unmatched, duplicate, skipped: outside kernel text) / zeroed slots",
            f"{c.records} ({c.unmatched_records}, {c.duplicate_records}, {c.skipped_records}) / {c.zeroed_records}",
        ),
    ]
    rows += [(f"ool stubs: {code(a.name)}", stub_text(a) if a.covers else f"**{stub_text(a)}**") for a in img.stubs]
    if img.stub_gap is not None:
        rows.append(("ool stubs", stub_gap_text(img.stub_gap)))
    if img.generation is Generation.OOL and not img.stubs and img.kind is Kind.MODULE:
        rows.append(("ool stubs", "carved from `.stubs` at load, one per record (module_64.c setup_ftrace_ool_stubs)"))
    rows += [("mflr-nop safety", safety_text(safety)), ("the question", img.question)]
    return rows


# Every recorded site in a weak-function body, whether the kernel disables it (scan's weak-body,
# past FTRACE_MCOUNT_MAX_OFFSET) or keeps it: two counts that once read alike (262 and 261 on 6.12)
WEAK_BODIES: Final = "recorded sites in weak-function bodies (disabled by the kernel or not)"


def weak_bodies_text(img: ImageAudit) -> str:
    """The count, or why there is none: without function symbols no body can be told (no-symbols)."""
    return "unknown (no function symbols)" if img.unnamed else str(img.counts.weak_bodies)


def stub_gap_text(gap: StubGap) -> str:
    """``not found (no symbols): coverage of N records unchecked`` (ool-stubs-unchecked)."""
    return f"not found ({gap.reason}): coverage of {counted(gap.records, 'record')} unchecked"


def stub_text(area: StubArea) -> str:
    """``used / count stubs of N bytes, covers`` (or how many records get none); plain text,
    for the HTML report too."""
    short = "covers its records" if area.covers else f"none for {counted(area.need, 'record')}"
    return f"{area.used} / {area.stub_count} stubs of {area.stub_size} bytes used; {short}"


def _image(img: ImageAudit) -> list[str]:
    out = [
        f"### {code(str(img.path))}",
        "",
        f"{img.kind.value}, {img.endian}-endian {img.abi.value}, group {code(img.group)}.",
        "",
        *_table(("what", "count"), _counts_rows(img)),
    ]
    if img.anomalies:
        out += ["", "#### Anomalies", ""]
        for a in img.anomalies[:MAX_SHOWN]:
            function = f"({text(a.function)})" if a.function else ""
            head = " ".join(x for x in (f"`{a.kind.value}`", text(a.place), function) if x)
            out.append(f"- **{a.severity.value}** {head}: {text(a.message)}")
            out += _code(a.evidence)
        out += _more_anomalies(img.anomalies[MAX_SHOWN:])
    open_sites = [sa for sa in img.sites if sa.safety.verdict in _OPEN]
    if open_sites:
        out += ["", "#### Sites not proven safe", ""]
        for sa in open_sites[:MAX_SHOWN]:
            why = sa.safety.why.value if sa.safety.why else ""
            site = f"{text(sa.site.place_text)} ({text(sa.site.function or '?')})"
            out.append(f"- **{sa.safety.verdict.value}** {site}: {why}")
            out += _code(sa.evidence)
        if len(open_sites) > MAX_SHOWN:
            out.append(f"- ... {len(open_sites) - MAX_SHOWN} more (--format json lists every one)")
    return out


_OPEN = (Verdict.LIVE, Verdict.UNKNOWN)


def _more_anomalies(left_out: Sequence[Anomaly]) -> list[str]:
    """The line that stands for the anomalies not listed: how many, and of which kinds. The
    breakdown counts those left out only, so that it adds up to the number before it (it counted
    every anomaly of the image: ``212 more (262 note weak-body)``)."""
    if not left_out:
        return []
    return [f"- ... {len(left_out)} more ({_tally(_by_kind(left_out))}; --format json lists every one)"]


def _by_kind(anomalies: Sequence[Anomaly]) -> dict[str, int]:
    return dict(sorted(Counter(f"{a.severity.value} {a.kind.value}" for a in anomalies).items()))


def _code(lines: Sequence[str]) -> list[str]:
    if not lines:
        return []
    return ["", "  ```", *(f"  {line}" for line in lines), "  ```", ""]


def audit_markdown(audit: Audit) -> str:
    total = summarise(audit.images, "all")
    out = ["# mcountrw audit", "", *_headline(total), ""]
    groups = roll_up(audit)
    if len(groups) > 1:
        out += [*_groups(groups), ""]
    many = len(audit.images) >= DETAIL_ALL_BELOW
    shown = [
        img for img in audit.images if not many or img.anomalies or any(sa.safety.verdict in _OPEN for sa in img.sites)
    ]
    if shown:
        out += ["## Images" + (" with findings" if many else ""), ""]
        for img in shown:
            out += [*_image(img), ""]
    if audit.errors:
        out += ["## Errors", "", *(f"- {text(e)}" for e in audit.errors), ""]
    worst = [s for s in Severity if total.anomalies[s.value]]
    out.append(f"_Highest severity: {worst[-1].value}._" if worst else "_No anomalies._")
    return "\n".join(out) + "\n"


def _gen(d: ImageDiff, side: int) -> str:
    g = d.generations[side]
    return g.value if g is not None else "none"


def _pairing(d: ImageDiff) -> str:
    """Why the sites of a pair with an unnamed side were paired by place, and what that means."""
    sides = [side for side, bare in zip("AB", d.unnamed, strict=True) if bare]
    who = "A and B have" if len(sides) == 2 else f"{sides[0]} has"
    return (
        f"**Paired by place: {who} sites but no function symbols (stripped).** Sites are matched by "
        "place (address; section+offset in a relocatable file), not by function name, and functions are "
        "not compared. Right for two copies of one build; across builds or a link places move, so "
        "sites read as added and removed that are only elsewhere."
    )


def _diff_functions(d: ImageDiff, limit: int | None) -> list[str]:
    """The function-level lines of one pair. When every function in both changed generation (two
    builds of two generations) that is said once instead of listing tens of thousands of names.
    A pair paired by place has no function lines: it says why instead."""
    built = f" Built {d.builds[0]} -> {d.builds[1]}." if d.rebuilt else ""
    if d.pairing is Pairing.PLACE:
        return [f"Generation {_gen(d, 0)} -> {_gen(d, 1)}.{built}", "", _pairing(d)]
    n = d.function_counts()
    out = wrapped(  # prose, wrapped at 80 columns as scan's is (a Markdown paragraph still)
        f"Generation {_gen(d, 0)} -> {_gen(d, 1)}.{built} Function names with sites (a function's aliases are "
        f"names of it): {d.common_functions} in both, "
        f"{n['added']} added, {n['removed']} removed, {n['generation']} changed generation, "
        f"{n['section']} moved between sections."
    )
    rows = list(d.functions)
    if n["generation"] and n["generation"] == d.common_functions:
        out.append(f"Every function in both changed generation ({_gen(d, 0)} -> {_gen(d, 1)}).")
        rows = [f for f in rows if f.change is not FunctionChangeKind.GENERATION]
    table = [(f.change.value, text(f.function), text(f.before or ""), text(f.after or "")) for f in rows[:limit]]
    if table:
        out += ["", *_table(("function change", "function", "A", "B"), table)]
    if limit is not None and len(rows) > limit:
        out.append(f"\n... {len(rows) - limit} more functions (--all or -o FILE lists every one)")
    return out


def _alone(files: Sequence[Unpaired]) -> str:
    """``3 files (41 sites)``: a module one kernel ships alone is sites it gains or lacks."""
    sites = f" ({counted(sum(u.sites for u in files), 'site')})" if files else ""
    return counted(len(files), "file") + sites


def _unpaired_line(alone: Unpaired) -> str:
    generation = alone.generation.value if alone.generation else "no generation"
    sites = counted(alone.sites, "site")
    return f"- {code(str(alone.path))}: {generation}, {sites} in {counted(alone.functions, 'function')}"


def _changed_function(change: SiteChange) -> str:
    """The function of a changed site; for one in no function (a weak body), ``?`` and the symbol
    it follows, by which diff paired it (as scan's table says ``? (listed as NAME)``)."""
    if change.function is not None:
        return change.function
    return "?" if change.follows is None else f"? (after {change.follows})"


def _zeroed_lines(d: ImageDiff) -> list[str]:
    """What zeroed record slots on a side read without its patch log mean for the pair: a rewrite
    that dropped records left them, and the sites it nopped, which call nothing and which only its
    log names, read as removed (a 6.12 vmlinux against its prenop'ed copy: 38710 sites and 38247
    functions "removed", said with nothing else, where the functions are all there)."""
    zeroed = zip("AB", d.unlogged_zeroed, strict=True)
    sides = [f"{side}: {counted(n, 'zeroed record slot')}" for side, n in zeroed if n]
    if not sides:
        return []
    return [
        f"**Zeroed records, no patch log read:** {'; '.join(sides)}, what a rewrite that drops records leaves "
        "(mcountrw nop --drop-records, prenop; in a vmlinux also the linker's padding between record tables). "
        "The sites it nopped call nothing and only its patch log names them, so here they read as removed "
        "sites, and a function whose every site it nopped as a removed function: give the log (--log, "
        "--log-dir) to compare them.",
        "",
    ]


def diff_markdown(diff: Diff, limit: int | None = 200) -> str:
    """Changes per image pair; ``limit`` changes listed per pair (None: all)."""
    out = ["# mcountrw diff", ""]
    total = sum(len(d.changes) for d in diff.images)
    functions = sum(len(d.functions) for d in diff.images)
    # A site can change in several ways at once (nopped and its record dropped): say how many sites.
    changed = sum(len({id(c.before or c.after) for c in d.changes}) for d in diff.images)
    pairs, sites, funcs = (
        counted(len(diff.images), "image pair"),
        counted(total, "site change") + (f" at {counted(changed, 'site')}" if changed != total else ""),
        counted(functions, "function change"),
    )
    out.append(f"**{pairs}, {sites}, {funcs}**; {_alone(diff.only_a)} only in A, {_alone(diff.only_b)} only in B.")
    for d in diff.images:
        if (
            not (d.changes or d.functions or d.rebuilt or d.boot_changed)
            and d.pairing is Pairing.NAME
            and len(diff.images) > 1
        ):
            continue
        counts = Counter(c.change.value for c in d.changes)
        out += ["", f"## {code(str(d.a))} -> {code(str(d.b))}", "", *_zeroed_lines(d), *_diff_functions(d, limit), ""]
        # Across generations a pair compares by what boot makes of it: its words always differ.
        across = d.generations[0] is not d.generations[1]
        same, words = ("the same at boot", "; the words each generation's own") if across else ("unchanged", "")
        out += wrapped(
            f"Sites: {_tally(dict(sorted(counts.items()))) if counts else 'no changes'}; {d.unchanged} {same} "
            f"({d.relocated} relocated "
            f"with their function{words}); records {d.records[0]} -> {d.records[1]}."
        )
        if d.boot_changed:
            out.append(f"\n**After boot:** A: {text(d.boot[0] or 'ftrace on')}; B: {text(d.boot[1] or 'ftrace on')}.")
        rows = [
            (c.change.value, text(_changed_function(c)), text(c.before.place_text) if c.before else "",
             text(c.after.place_text) if c.after else "", text(c.detail))
            for c in d.changes[:limit]
        ]  # fmt: skip
        if rows:
            out += ["", *_table(("change", "function", "A", "B", "detail"), rows)]
        if limit is not None and len(d.changes) > limit:
            out.append(f"\n... {len(d.changes) - limit} more (--all or -o FILE lists every one)")
    for title, alone in (("Only in A", diff.only_a), ("Only in B", diff.only_b)):
        if alone:
            out += ["", f"## {title}", "", *(_unpaired_line(u) for u in alone)]
    if diff.errors:
        out += ["", "## Errors", "", *(f"- {text(e)}" for e in diff.errors)]
    return "\n".join(out) + "\n"
