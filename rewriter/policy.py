"""Pre-nop policies: which functions stay traceable in a shipped kernel, and which are nopped.

A policy is a small text file, one rule a line, in the pattern language of ftrace's
``set_ftrace_filter`` / ``set_ftrace_notrace`` (Documentation/trace/ftrace.rst)::

    # keep the initcall tracer, the VFS entry points and all of ext4 traceable
    default nop
    keep do_one_initcall
    keep vfs_*
    keep :mod:ext4
    nop  ext4_*_test*:mod:ext4      # ...except these

Rules:

* ``default keep|nop`` -- exactly once: the verdict for a site no rule matches.
* ``keep PATTERN`` / ``nop PATTERN`` -- one pattern a line. The **last** matching rule decides.
* ``PATTERN`` is ``FUNCTION[:mod:MODULE][:section:SECTION]``: each part a glob (``*``, ``?``,
  ``[...]``), matched against the whole name. An empty or missing FUNCTION means ``*``, so
  ``:mod:ext4`` is every function of ext4 (as in ftrace: "blank search means to match all funcs
  in the mod"). ``:mod:!NAME`` is every function *but* NAME's, the core kernel's included (ftrace's
  ``match_records()``: a function in no module fails no exclusion); any other ``:mod:`` never
  matches the core kernel. ``:mod:`` and ``:mod:*`` are every module, ``:mod:!`` the core kernel
  alone (its "blank module globbing"). Globs are the kernel's (lib/glob.c): ``\\`` escapes the
  next character, ``[!...]`` complements, an unclosed ``[`` is itself. A FUNCTION or MODULE that
  ftrace does not read as a glob is refused: a leading ``!`` on FUNCTION (ftrace removes those
  functions from the filter: a policy says that with its other verb) or a leading digit (ftrace
  reads a record's index; ``:mod:6lowpan`` fails there, ``:mod:[6]lowpan`` is the module).
  ``:section:`` matches the section
  holding the call site (``.text``, ``.init.text``, ``.text.unlikely``, ...). A site in no function
  has the name ftrace lists it under (``Scan.name_of``: a weak body's, the nearest symbol before
  it), as set_ftrace_filter matches it; one it lists under no name has ``""``, which only ``*`` matches.
* ``#`` starts a comment (at the start of a line or after whitespace); blank lines are ignored.

Module names are the kernel's, read from the module (``rewriter.elf.modname``: its ``struct
module``'s ``name``, KBUILD_MODNAME, ``snd_hda_intel`` for ``snd-hda-intel.ko``), which is what
ftrace's ``[module]`` column shows; never its file name, which the kernel does not see (a renamed
copy, ``x.ko.xz.orig``, is still its module). A module that names itself nowhere has the name
``""``, which only ``*`` matches (the loader refuses it).

Pure: parsing and deciding take values and return values; no files are read here except by
:func:`load`, and nothing here knows about ELF.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final, NamedTuple

from rewriter.boot import init_only
from rewriter.errors import RewriteError
from rewriter.generations import Generation
from rewriter.globs import ftrace_glob
from rewriter.kernels import Kernel, Kernels
from rewriter.locs import ZERO_ADJUSTED, Locs, loop_for_modules, unchecked_drops, zero_records_fail
from rewriter.prose import agreeing, and_more, counted, printable
from rewriter.reading import read_regular_text


class PolicyError(RewriteError):
    """A policy file that does not parse: one line for each error, naming the file and line (the
    message is the first, and counts the others)."""

    def __init__(self, *lines: str) -> None:
        more = f" (and {counted(len(lines) - 1, 'more error')}: {', '.join(lines[1:])})" if len(lines) > 1 else ""
        super().__init__(lines[0] + more)
        self.lines = lines


class Verb(enum.Enum):
    KEEP = "keep"  # the site stays as it is: traceable (unless the kernel could not trace it anyway)
    NOP = "nop"  # the kernel's record of the site is dropped, and its words made nop (see NOP_MEANS)


NOP_MEANS: Final[Mapping[Generation, str]] = MappingProxyType(
    {
        Generation.MPROFILE: "`mflr r0; bl _mcount` become `nop; nop` and the records are dropped",
        Generation.PATCHABLE: "the records are dropped; the words stay the `nop; nop` the compiler left, "
        "so boot never writes `mflr r0` there",
        Generation.OOL: "the records are dropped; the entry stays the `nop` the compiler left, and its ool stub unused",
    }
)
"""What ``nop`` does to a site, per generation. The kernel's boot-time init accepts only the
compiler's words at a recorded place, so on patchable and ool kernels, whose sites are built as
nops, nopping a site *is* dropping its record (docs/prenop.md)."""


@dataclass(frozen=True)
class Pattern:
    """One ftrace-style pattern, compiled. ``module`` None: any file, vmlinux included."""

    text: str
    function: re.Pattern[str]
    module: re.Pattern[str] | None
    module_negated: bool
    section: re.Pattern[str] | None

    def matches_file(self, module: str | None) -> bool:
        """Whether this pattern can match any site of a file whose module name is ``module``
        (None for the core kernel)."""
        if self.module is None:
            return True
        if module is None:
            # match_records(): the core kernel's functions are in no module, so they fail every
            # module glob and pass every exclusion (qemu, 7.2 and 6.12: `*:mod:!nls_utf8` lists them).
            return self.module_negated
        return bool(self.module.fullmatch(module)) != self.module_negated

    def matches_site(self, function: str, section: str) -> bool:
        """The per-site part (the file part is :meth:`matches_file`)."""
        if self.section is not None and not self.section.fullmatch(section):
            return False
        return bool(self.function.fullmatch(function))


@dataclass(frozen=True)
class Rule:
    verb: Verb
    pattern: Pattern
    line: int

    def __str__(self) -> str:
        """The rule as people read it: a control character in the pattern is shown escaped, so what
        is printed is the pattern that is matched (a terminal would act on an escape sequence)."""
        return f"{self.verb.value} {printable(self.pattern.text)}"


@dataclass(frozen=True)
class Policy:
    """``rules`` in file order; ``sha256`` of the file's text (for reports)."""

    name: str
    default: Verb
    rules: tuple[Rule, ...]
    sha256: str

    def for_file(self, module: str | None) -> FilePolicy:
        """The rules that can match in one file, so that per-site decisions skip the rest."""
        live = tuple((i, r) for i, r in enumerate(self.rules) if r.pattern.matches_file(module))
        return FilePolicy(self.default, tuple(reversed(live)))


@dataclass(frozen=True)
class FilePolicy:
    default: Verb
    rules_last_first: tuple[tuple[int, Rule], ...]

    @property
    def may_nop(self) -> bool:
        """Whether any site of the file could be nopped: the default, or a rule that can match in
        it, says nop. False: the policy keeps the whole file, whatever its sites are."""
        return self.default is Verb.NOP or any(r.verb is Verb.NOP for _, r in self.rules_last_first)

    def decide(self, function: str | None, section: str) -> tuple[Verb, int | None]:
        """(verdict, index of the deciding rule, or None when the default decides)."""
        name = function or ""
        for i, rule in self.rules_last_first:
            if rule.pattern.matches_site(name, section):
                return rule.verb, i
        return self.default, None


# -- parsing --------------------------------------------------------------------------------

_COMMENT = re.compile(r"(^|\s)#.*$")


def load(path: Path) -> Policy:
    try:
        text = read_regular_text(path)
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not a text file") from None
    # A byte-order mark, as some editors start a UTF-8 file with, is no part of the first rule.
    return parse(text.removeprefix("\ufeff"), str(path))


def parse(text: str, name: str = "<policy>") -> Policy:
    """The policy in ``text``; every line in error is told, one line each (a policy with four
    typos took four runs to mend: only the first was)."""
    default: Verb | None = None
    rules: list[Rule] = []
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        try:
            rule = _parse_line(line, f"{name}:{n}", n, default is not None)
        except PolicyError as e:
            errors.extend(e.lines)
            continue
        if isinstance(rule, Verb):
            default = default or rule  # a second default is an error (_parse_line), not taken
        else:
            rules.append(rule)
    if default is None:
        errors.append(f"{name}: no `default keep` or `default nop` line")
    if errors:
        raise PolicyError(*errors)
    assert default is not None
    return Policy(name, default, tuple(rules), hashlib.sha256(text.encode()).hexdigest())


def _parse_line(line: str, where: str, n: int, had_default: bool) -> Rule | Verb:
    """One rule, or the verb of a ``default`` line."""
    words = line.split()
    if words[0] == "default":
        if len(words) != 2 or words[1] not in ("keep", "nop"):
            raise PolicyError(f"{where}: expected `default keep` or `default nop`, found `{line}`")
        if had_default:
            raise PolicyError(f"{where}: a second `default` line (a policy has exactly one)")
        return Verb(words[1])
    if words[0] not in ("keep", "nop"):
        raise PolicyError(f"{where}: expected `keep PATTERN`, `nop PATTERN` or `default ...`, found `{line}`")
    if len(words) != 2:
        raise PolicyError(f"{where}: one pattern a line, found {len(words) - 1} in `{line}`")
    return Rule(Verb(words[0]), parse_pattern(words[1], where), n)


def parse_pattern(text: str, where: str = "<pattern>") -> Pattern:
    """``FUNCTION[:mod:MODULE][:section:SECTION]`` (C identifiers, ``.`` suffixes such as
    ``.constprop.0``, section and module names never contain ``:``)."""
    parts = text.split(":")
    function = parts[0] or "*"
    commands: dict[str, str] = {}
    rest = parts[1:]
    if len(rest) % 2:
        raise PolicyError(f"{where}: `{text}`: expected FUNCTION[:mod:MODULE][:section:SECTION]")
    for cmd, arg in zip(rest[::2], rest[1::2], strict=True):
        if cmd not in ("mod", "section"):
            raise PolicyError(f"{where}: `{text}`: unknown command `:{cmd}:` (known: :mod:, :section:)")
        if cmd in commands:
            raise PolicyError(f"{where}: `{text}`: `:{cmd}:` given twice")
        if cmd == "section" and not arg:
            raise PolicyError(f"{where}: `{text}`: `:section:` needs a name")
        commands[cmd] = arg
    module = commands.get("mod")
    negated = module is not None and module.startswith("!")
    if negated:
        module = module[1:]  # type: ignore[index]
    section = commands.get("section")
    _ftrace_reads_as_glob(function, "FUNCTION", where, text)
    if module is not None:
        _ftrace_reads_as_glob(module, "MODULE", where, text)
    return Pattern(
        text,
        ftrace_glob(function),
        # A blank module is ftrace's "blank module globbing": every module (or, negated, none).
        None if module is None else ftrace_glob(module or "*"),
        negated,
        None if section is None else ftrace_glob(section),
    )


def _ftrace_reads_as_glob(part: str, what: str, where: str, text: str) -> None:
    """Refuse what filter_parse_regex() does not read as a glob, so that no rule selects what the
    same pattern written to set_ftrace_filter would not."""
    if what == "FUNCTION" and part.startswith("!"):
        raise PolicyError(
            f"{where}: `{text}`: a {what} starting with `!` removes functions from ftrace's filter, "
            "it selects none: write the rule with the other verb"
        )
    if part[:1].isdigit():
        raise PolicyError(
            f"{where}: `{text}`: ftrace reads a {what} starting with a digit as a record's index, "
            f"not a name (it selects nothing by name): write `[{part[0]}]{part[1:]}`"
        )


# -- reports --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleUse:
    """How one rule (or the default, ``rule`` None) fared over a set of sites: ``matched`` sites
    its pattern matches, ``decided`` sites it is the last match for, ``examples`` a few of those
    (``function`` or ``function [module]``), sorted."""

    rule: Rule | None
    matched: int
    decided: int
    examples: tuple[str, ...]


UNNAMED: Final = "(unnamed)"  # the example shown for a site whose function has no symbol
EXAMPLES: Final = 4


class SiteFacts(NamedTuple):
    """What ``policy check`` needs of a site: its names, and why the kernel could not trace it
    after boot even if kept (None: it could; e.g. ``weak-body``, ``unrecorded``)."""

    function: str | None
    section: str
    untraceable: str | None = None


class ModuleNops(NamedTuple):
    """What the tally keeps of a module for prenop's refusals (:meth:`Tally.lines`)."""

    name: str
    generation: Generation | None
    nopped: int  # sites the policy nops
    release: str | None  # what its vermagic names: the vmlinux of that release loads it (rewriter.kernels)
    sites: int = 0  # all its sites, kept or nopped


class Tally:
    """Counts rule matches over many files' sites (for ``policy check``), and what the verdicts
    mean: kept sites that are traceable after boot (and why the others are not), nopped sites per
    generation (``NOP_MEANS``)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.matched = [0] * len(policy.rules)
        self.decided = [0] * (len(policy.rules) + 1)  # the last slot: the default
        self.examples: list[set[str]] = [set() for _ in range(len(policy.rules) + 1)]
        self.verdicts = {Verb.KEEP: 0, Verb.NOP: 0}
        self.files = 0
        self.modules = 0  # of the files: their kept sites are traceable once loaded, the others' after boot
        self.generations: Counter[Generation | None] = Counter()  # files per generation
        self.kept_untraceable: Counter[str] = Counter()  # kept sites the kernel cannot trace, by reason
        self.kept_init = 0  # kept traceable sites in init sections: traced only until then (boot.init_only)
        self.nopped: Counter[Generation | None] = Counter()  # nopped sites per generation
        # What prenop would refuse: a zeroed record fails under the older ftrace_process_locs()
        # loop (rewriter.locs), a vmlinux's own and, for a module, the run's vmlinux's.
        self.kernels: list[Kernel] = []  # the vmlinux images, which load the modules of their release
        self.vmlinux_nops: list[tuple[Generation | None, Locs, int]] = []
        self.module_nops: list[ModuleNops] = []

    @property
    def when_traced(self) -> str:
        """When the kept sites can be traced, as scan says it: modules once loaded."""
        if self.modules == self.files:
            return "once loaded"
        return "after boot" if not self.modules else "after boot or once loaded"

    @property
    def kept_traceable(self) -> int:
        return self.verdicts[Verb.KEEP] - sum(self.kept_untraceable.values())

    def add_file(
        self,
        module: str | None,
        sites: Sequence[SiteFacts],
        generation: Generation | None = None,
        locs: Locs | None = None,
        release: str | None = None,
    ) -> None:
        """``sites``: every site of one file, whose generation is ``generation``; ``locs``: a
        vmlinux's ftrace_process_locs() loop (None: not a vmlinux); ``release``: the kernel release
        the file names (a module's vermagic, a vmlinux's linux_banner)."""
        nopped = self.verdicts[Verb.NOP]
        self._add_sites(module, sites, generation)
        nopped = self.verdicts[Verb.NOP] - nopped
        if module is not None:
            self.module_nops.append(ModuleNops(module, generation, nopped, release, len(sites)))
        elif locs is not None:
            self.kernels.append(Kernel(None, release, loop_for_modules(generation, locs)))
            self.vmlinux_nops.append((generation, locs, nopped))

    def _add_sites(self, module: str | None, sites: Sequence[SiteFacts], generation: Generation | None) -> None:
        self.files += 1
        self.modules += module is not None
        self.generations[generation] += 1
        fp = self.policy.for_file(module)
        for function, section, why_not in sites:
            name = function or ""
            deciding: int | None = None
            for i, rule in fp.rules_last_first:
                if rule.pattern.matches_site(name, section):
                    self.matched[i] += 1
                    if deciding is None:
                        deciding = i
            slot = len(self.policy.rules) if deciding is None else deciding
            verdict = self.policy.default if deciding is None else self.policy.rules[deciding].verb
            self.verdicts[verdict] += 1
            if verdict is Verb.NOP:
                self.nopped[generation] += 1
            elif why_not is not None:
                self.kept_untraceable[why_not] += 1
            elif init_only(section):
                self.kept_init += 1
            self.decided[slot] += 1
            ex = self.examples[slot]
            label = name or UNNAMED
            if module is not None:
                label = f"{label} [{module or UNNAMED}]"
            if len(ex) < EXAMPLES * 8:
                ex.add(label)

    def uses(self) -> list[RuleUse]:
        out = []
        for i, rule in enumerate(self.policy.rules):
            out.append(RuleUse(rule, self.matched[i], self.decided[i], _examples(self.examples[i])))
        d = len(self.policy.rules)
        out.append(RuleUse(None, self.decided[d], self.decided[d], _examples(self.examples[d])))
        return out

    def warnings(self) -> list[str]:
        out = []
        for i, rule in enumerate(self.policy.rules):
            if self.matched[i] == 0:
                out.append(f"{self.policy.name}:{rule.line}: `{rule}` matches nothing")
            elif self.decided[i] == 0:
                which = agreeing(self.matched[i], "it", "every one of them")
                out.append(f"{self.policy.name}:{rule.line}: `{rule}` matches {counted(self.matched[i], 'site')}, "
                           f"but later rules decide {which}")  # fmt: skip
        return out + self._refused()

    def _refused(self) -> list[str]:
        """Nopped sites whose records prenop cannot drop (``rewriter.rewrite``'s refusal): a
        patchable vmlinux, or its modules, under the older ftrace_process_locs() loop."""
        out = []
        vmlinux = sum(n for g, loop, n in self.vmlinux_nops if zero_records_fail(g, loop))
        if vmlinux:
            drops = agreeing(vmlinux, "its record", "their records")
            out.append(f"the vmlinux: nop on {counted(vmlinux, 'site')} drops {drops}, but {ZERO_ADJUSTED}; "
                       "prenop refuses it")  # fmt: skip
        kernels = Kernels(tuple(self.kernels))
        held = [(m.nopped, m.generation, kernels.locs_for(m.release)) for m in self.module_nops]
        modules = [n for n, generation, loop in held if n and zero_records_fail(generation, loop)]
        if modules:
            files, sites = counted(len(modules), "module"), counted(sum(modules), "site")
            drops = agreeing(sum(modules), "its record", "their records")
            out.append(f"{files}: nop on {sites} drops {drops}, but the vmlinux's is the older loop "
                       f"({ZERO_ADJUSTED}); prenop refuses {agreeing(len(modules), 'it', 'them')}")  # fmt: skip
        return out + self._other_release()

    def unchecked(self) -> tuple[int, int]:
        """(modules, sites): the patchable modules whose nopped sites drop records with no kernel of
        the run whose loop holds them (``rewriter.locs.unchecked_drops``), which prenop warns of
        when it drops them; a module no kernel of the run loads is refused instead (not counted)."""
        kernels = Kernels(tuple(self.kernels))
        held = [(m, kernels.locs_for(m.release)) for m in self.module_nops if not kernels.refuse(m.release)]
        drops = [n for m, loop in held if (n := unchecked_drops(m.generation, loop, m.nopped))]
        return len(drops), sum(drops)

    def _other_release(self) -> list[str]:
        """Modules built for another release than the vmlinux checked with them: prenop refuses
        them (the vmlinux is not the kernel that loads them, nor its loop theirs)."""
        kernels = Kernels(tuple(self.kernels))
        by_release: dict[str | None, list[ModuleNops]] = {}
        for m in self.module_nops:
            if kernels.refuse(m.release):
                by_release.setdefault(m.release, []).append(m)
        theirs = agreeing(len(kernels.known), "the vmlinux is", "the vmlinux images are")
        loads = agreeing(len(kernels.known), "not the kernel that loads", "none loads")
        lines = []
        for release, modules in by_release.items():  # one line per release: each names what it was built for
            more = len(modules) - 1
            them = agreeing(len(modules), "it", "them")
            # The table above counted their sites as the policy decides them; prenop writes none.
            sites = counted(sum(m.sites for m in modules), "site")
            lines.append(
                f"module {modules[0].name}{and_more(more, 'module')}: built for {release} (its vermagic), and "
                f"{theirs} {kernels.releases()}: {loads} {them}; "
                f"prenop refuses {them} (the counts above include {agreeing(len(modules), 'its', 'their')} {sites})"
            )
        return lines


def _examples(labels: set[str]) -> tuple[str, ...]:
    """A few of ``labels`` in name order, functions with a name first: an unnamed site (a weak
    function's body, a stripped image) is an example only when nothing named is."""
    return tuple(sorted(labels, key=lambda label: (label.startswith(UNNAMED), label)))[:EXAMPLES]
