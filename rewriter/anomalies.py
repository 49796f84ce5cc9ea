"""What an audit can find: each kind of anomaly, its severity and the argument for it (:data:`RULES`),
and the :class:`Anomaly` record a finding is.

The one home of the rules: ``rewriter.audit`` finds anomalies, the reports render them, the SARIF
report publishes :data:`RULES` as its rule set, and docs/audit.md's table is checked against it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple


class Severity(enum.Enum):
    NOTE = "note"
    WARNING = "warning"
    ERROR = "error"


RANK: Final[Mapping[Severity, int]] = {Severity.NOTE: 0, Severity.WARNING: 1, Severity.ERROR: 2}


class AnomalyKind(enum.Enum):
    BROKEN = "broken"
    R0_LIVE = "r0live"
    UNRECORDED = "unrecorded"
    DANGLING = "dangling"
    DUPLICATE_RECORD = "duplicate-record"
    UNEXPECTED_WORDS = "unexpected-words"
    NOT_AT_ENTRY = "not-at-entry"
    PATCHABLE_BEFORE_GEP = "patchable-before-gep"
    ABI_MISMATCH = "abi-mismatch"
    MODULE_REFUSED = "module-refused"
    BOOT_REFUSED = "boot-refused"
    OOL_STUBS = "ool-stubs"
    OOL_STUBS_UNCHECKED = "ool-stubs-unchecked"
    MIXED_STATES = "mixed-states"
    ZEROED_RECORDS = "zeroed-records"
    SKIPPED_RECORDS = "skipped-records"
    UNREAD_RECORDS = "unread-records"
    UNALLOCATED = "unallocated"
    WEAK_BODY = "weak-body"
    NO_SYMBOLS = "no-symbols"
    GENERATION_OVERRIDE = "generation-override"
    XZ_CHECK = "xz-check"
    ZSTD_SIZE = "zstd-size"
    GZIP_HEADER = "gzip-header"
    RELEASE_MISMATCH = "release-mismatch"


class AnomalyRule(NamedTuple):
    """What an anomaly kind means: its severity, title and why (a SARIF rule; not a policy rule)."""

    severity: Severity
    title: str
    why: str  # the argument for the severity, shown in docs and in SARIF rule help


RULES: Final[Mapping[AnomalyKind, AnomalyRule]] = {
    AnomalyKind.BROKEN: AnomalyRule(
        Severity.ERROR,
        "site in the race state (nop; bl _mcount)",
        "A CPU that runs it reaches _mcount with r0 not holding LR; _mcount restores LR from r0 and "
        "the function returns to garbage.",
    ),
    AnomalyKind.R0_LIVE: AnomalyRule(
        Severity.WARNING,
        "the function reads r0 after the site: its mflr r0 must stay",
        "mprofile: with mflr r0 in place the code is correct, but nopping it (mcountrw nop, the "
        "nopped and guarded states) changes what the function does: a warning. Where the mflr is "
        "already gone (nopped, guarded, broken) the function reads garbage today: an error. "
        "patchable: the compiler left nop; nop and the kernel's ftrace_init_nop() makes the first "
        "one mflr r0, so the body reads LR after boot and the caller's r0 before: a warning that the "
        "first nop must not stay a nop. ool: never (the mflr lives in the stub).",
    ),
    AnomalyKind.UNRECORDED: AnomalyRule(
        Severity.WARNING,
        "call to _mcount with no record",
        "ftrace never patches a site it has no record of: the bl stays live and calls _mcount on "
        "every entry, and the function cannot be traced or disabled. A disabled site without a record "
        "is only a note. What dropping records on purpose leaves is not reported: the state a rewrite "
        "to nopped leaves, every word a nop (mprofile, patchable: nop; nop; ool: its one nop, which is "
        "the disabled state), and guarded (b +8; nop), which calls nothing either.",
    ),
    AnomalyKind.DANGLING: AnomalyRule(
        Severity.ERROR,
        "record that points at no call site",
        "At boot (or module load) ftrace_init_nop() finds an unexpected word there (mprofile: no bl "
        "_mcount; patchable and ool: no nop), calls ftrace_bug() and disables function tracing for the "
        "whole kernel.",
    ),
    AnomalyKind.DUPLICATE_RECORD: AnomalyRule(
        Severity.ERROR,
        "site recorded more than once",
        "ftrace creates one dyn_ftrace per record (ftrace_process_locs() does not merge equal ones), and "
        "the second fails where the first changed the words, so ftrace_bug() disables tracing. mprofile: "
        "at boot the second ftrace_make_nop() finds the nop the first wrote instead of the bl; patchable: "
        "at boot the second ftrace_init_nop() finds the mflr r0 the first wrote instead of a nop; ool: "
        "both pass the boot check (the entry stays a nop) and each takes a stub, but enabling the second "
        "finds the first one's b stub instead of a nop.",
    ),
    AnomalyKind.UNEXPECTED_WORDS: AnomalyRule(
        Severity.ERROR,
        "site slots hold unexpected instructions",
        "The kernel validates mflr r0 (or gcc 5's std r0,16(r1)) before the bl and refuses anything "
        "else with ftrace_bug(); mcountrw cannot plan a route for it either.",
    ),
    AnomalyKind.NOT_AT_ENTRY: AnomalyRule(
        Severity.WARNING,
        "site that is not at its function's entry",
        "ftrace attributes a site to the function around it and assumes it is the prologue's "
        "(ftrace_location, the graph tracer's parent address); a call elsewhere gets traced under "
        "the wrong assumptions. Not an error: the call itself still works.",
    ),
    AnomalyKind.PATCHABLE_BEFORE_GEP: AnomalyRule(
        Severity.ERROR,
        "patchable-entry nops before the ELFv2 global entry",
        "Local calls enter at the local entry and skip the nops, so ftrace misses them; the kernel "
        "rejects such a compiler (arch/powerpc/tools/gcc-check-fpatchable-function-entry.sh).",
    ),
    AnomalyKind.ABI_MISMATCH: AnomalyRule(
        Severity.ERROR,
        "ELFv1/ELFv2 or byte-order mismatch",
        "The module loader refuses a module whose ABI (e_flags) or byte order differs from the "
        "kernel's, and a file whose e_flags contradict its own symbols is mis-built.",
    ),
    AnomalyKind.MODULE_REFUSED: AnomalyRule(
        Severity.ERROR,
        "module the kernel refuses to load (allocated sections that share a name)",
        "The module loader makes a sysfs file of each allocated section (/sys/module/NAME/sections/"
        "SECTION) and fails the load when two share a name: insmod says File exists, and none of the "
        "module's functions is ever traced (from 6.12; before, it loads: unread-records). Objects of "
        "gcc 13 and later have one __patchable_function_entries per function; the kernel's build "
        "gathers them (scripts/module.lds), a module linked without it keeps them apart. Seen under "
        "qemu on 6.12 and 7.2.",
    ),
    AnomalyKind.BOOT_REFUSED: AnomalyRule(
        Severity.ERROR,
        "recorded site whose words the kernel's boot-time init refuses",
        "ftrace_init_nop() accepts only the words the compiler left (mprofile: bl _mcount; patchable: "
        "nop; nop; ool: nop) and prints `expected (...) != found (...)` (a kernel before 6.6 has only the generic one: "
        "the ftrace_make_nop() its init calls prints `replaced (...) != old (...)`, or beyond branch "
        "range of _mcount and in a module `Not expected bl: opcode is ...`); ftrace_bug() then turns function tracing "
        "off for the whole boot (for a module: at load). A rewritten site must lose its record.",
    ),
    AnomalyKind.OOL_STUBS: AnomalyRule(
        Severity.ERROR,
        "ool stubs that do not cover the records",
        "ftrace_init_ool_stub() gives every record a stub of its area (7.2: ftrace_ool_stub_text while "
        "in range, then ftrace_ool_stub_text_end; .init.text: ftrace_ool_stub_inittext). A record "
        "past an area's *_count (WARN_ON(index > count)) or out of branch range of its stub gets "
        "-EINVAL, and ftrace_bug() turns function tracing off for the whole boot.",
    ),
    AnomalyKind.OOL_STUBS_UNCHECKED: AnomalyRule(
        Severity.WARNING,
        "ool vmlinux whose stub areas were not found: stub coverage unchecked",
        "The areas (ftrace_ool_stub_text, _text_end, _inittext) and their *_count words are found by "
        "their symbols; a stripped vmlinux has none, so the check behind ool-stubs, an error, cannot "
        "run. Not an error: nothing is known to be short, and a kernel built as it was is sized to its "
        "records. A warning, not a note: if a rewrite or a bad build left an area short, this kernel "
        "would turn function tracing off at boot and this audit could not say so. Modules are never "
        "reported: the loader carves their stubs from .stubs, one per record.",
    ),
    AnomalyKind.MIXED_STATES: AnomalyRule(
        Severity.NOTE,
        "sites of one variant in more than one state",
        "A compiler emits every site in one state; a mix means a rewrite that stopped part way or "
        "a deliberate partial one. Nothing breaks by itself.",
    ),
    AnomalyKind.ZEROED_RECORDS: AnomalyRule(
        Severity.NOTE,
        "zeroed slots in a record table (__mcount_loc, __patchable_function_entries)",
        "Dropped records (ftrace_process_locs skips zero entries): the sites they named are out of "
        "ftrace's reach on purpose. An error on a patchable vmlinux whose ftrace_process_locs() has the "
        "loop from before 2025 (rewriter.locs): it adds 4 before it tests for zero, and ftrace is off at "
        "boot. The message names the table: a vmlinux's is __mcount_loc in every "
        "generation (the linker script gathers the compiler's __patchable_function_entries there), a "
        "module's or object's __mcount_loc (mprofile) or __patchable_function_entries (patchable, ool).",
    ),
    AnomalyKind.SKIPPED_RECORDS: AnomalyRule(
        Severity.NOTE,
        "records outside kernel text",
        "ftrace_process_locs() skips vmlinux records outside _stext.._etext and "
        "_sinittext.._einittext, when its code shows the 2025 loop that checks (rewriter.locs): nothing "
        "is patched there and nothing breaks. The older loop (6.1) has no such check: a dangling error.",
    ),
    AnomalyKind.UNREAD_RECORDS: AnomalyRule(
        Severity.WARNING,
        "records in a module's second record section, which its loader never reads",
        "A kernel before 6.12 loads a module with two allocated sections of one name (sysfs only "
        "warns), and ftrace takes the first __patchable_function_entries or __mcount_loc (find_sec()): "
        "the functions the others name are never traced. Nothing breaks, so not an error; tracing "
        "misses them, so not a note. From 6.12 the loader refuses such a module: module-refused. "
        "Also a module with both __mcount_loc and __patchable_function_entries: find_module_sections() "
        "reads only FTRACE_CALLSITE_SECTION (the one its vermagic names), never the other. And a module "
        "whose record section lacks SHF_ALLOC: find_sec() takes allocated sections only, so the loader "
        "never finds it (seen under qemu on 6.1, 6.12 and 7.2: it loads, none of its functions listed).",
    ),
    AnomalyKind.UNALLOCATED: AnomalyRule(
        Severity.WARNING,
        "recorded sites in a module section without SHF_ALLOC, which the loader never places",
        "The module loader lays out only allocated sections (kernel/module/main.c layout_sections()) and "
        "skips the relocation tables aimed at the others (apply_relocations()): the section's code is not "
        "in the loaded module, and its records name the loader's temporary copy of the file. patchable and "
        "ool: ftrace_module_enable() never enables a record outside the module, so the functions are "
        "never traced, and nothing else of ftrace changes (6.12 and 7.2 under qemu load the module with "
        "ftrace on): a warning, as for unread-records. mprofile: their bl _mcount is never relocated, "
        "ftrace_make_nop() finds no module stub at its target (Failed to get trampoline target), and "
        "ftrace_bug() turns function tracing off for the whole kernel at load (6.1 under qemu): an error.",
    ),
    AnomalyKind.WEAK_BODY: AnomalyRule(
        Severity.NOTE,
        "record in the body of an overridden weak function",
        "The linker kept the body of a weak function that a strong one replaced, and dropped its "
        "symbol; its record stays. Where FTRACE_MCOUNT_MAX_OFFSET is defined (powerpc from 6.2: 12 for "
        "mprofile sites, 16 from 6.6 for every generation) test_for_valid_rec() marks a record further "
        "than that from its kallsyms symbol FTRACE_FL_DISABLED; 6.1 defines none, and the record stays "
        "traceable under the preceding symbol's name. Either way it passes the boot checks.",
    ),
    AnomalyKind.NO_SYMBOLS: AnomalyRule(
        Severity.NOTE,
        "no function symbols: the checks that need them did not run",
        "Sites are unnamed, and what is told by function symbols cannot be: weak-body (patchable, "
        "ool: the kernel disables those records, so a few sites scan and the html report call "
        "traceable may not be), not-at-entry "
        "and patchable-before-gep (where a site sits in its function); the mflr-nop walk has no "
        "function edges, so more sites stay unknown (and are listed). None of these turns ftrace off: "
        "weak bodies and sites away from the entry are notes and warnings, and a compiler that puts "
        "the nops before the global entry fails the kernel's gcc-check-fpatchable-function-entry.sh, "
        "so no patchable kernel is built with one. A note: the report is complete for everything else.",
    ),
    AnomalyKind.GENERATION_OVERRIDE: AnomalyRule(
        Severity.WARNING,
        "--generation contradicts what the image's contents say",
        "The audit obeys --generation (meant for stripped images, where the contents cannot tell) and "
        "reads every site by that generation's layout, so its other findings are about the image as "
        "it would be if the option were right. A warning, not an error: the option may be right (an "
        "image rewritten oddly), but a report on a misread kernel must not look clean.",
    ),
    AnomalyKind.XZ_CHECK: AnomalyRule(
        Severity.WARNING,
        "a .ko.xz whose check the kernel's own decompressor refuses",
        "The kernel's xz decoder (kernel/module/decompress.c) takes a CRC32 check or none, as Kbuild "
        "writes them (xz --check=crc32); xz's own default is CRC64. kmod hands a module to that decoder "
        "when /sys/module/compression names its compression (finit_module with "
        "MODULE_INIT_COMPRESSED_FILE), and does not retry when it fails: the module never loads "
        "(EINVAL; under qemu on Debian's 6.12 and 7.2). Where kmod decompresses it itself, it loads: so "
        "a warning, not an error.",
    ),
    AnomalyKind.ZSTD_SIZE: AnomalyRule(
        Severity.WARNING,
        "a .ko.zst whose frame says no content size, which kmod 34 and later refuse",
        "kmod decompresses a .ko.zst itself unless the kernel's own decompressor takes zstd "
        "(/sys/module/compression; Debian's 6.12 and 7.2 take xz only), and from kmod 34 on it allocates "
        "the size the frame header gives (ZSTD_getFrameContentSize) and refuses a frame without one: the "
        "module never loads (zstd: Failed to determine decompression size, EINVAL). zstd leaves the size "
        "out when it compresses a pipe, or with --no-content-size; Kbuild compresses the file. kmod before "
        "34 and the kernel's zstd decoder stream it, and it loads (under qemu on a 7.2 built with "
        "CONFIG_MODULE_COMPRESS_ZSTD): a warning, not an error. A rewrite "
        "writes the size.",
    ),
    AnomalyKind.GZIP_HEADER: AnomalyRule(
        Severity.WARNING,
        "a .ko.gz whose header has fields the kernel's own decompressor does not skip",
        "The kernel's gzip decoder (kernel/module/decompress.c, module_gzip_header_len) skips the 10 fixed "
        "bytes and a file name, not an extra field (FEXTRA), a comment (FCOMMENT) or a header CRC (FHCRC), "
        "and inflates from there: where kmod hands it the module (/sys/module/compression: gzip, "
        "CONFIG_MODULE_COMPRESS_GZIP) it does not load (decompression failed with status -3, EINVAL; under "
        "qemu on a 7.2 built so). kmod's zlib reads every field, and "
        "Debian's 6.12 and 7.2 take xz only, so kmod decompresses a .ko.gz there and it loads: a warning, "
        "not an error. A rewrite writes a header with no optional field.",
    ),
    AnomalyKind.RELEASE_MISMATCH: AnomalyRule(
        Severity.WARNING,
        "module built for another release than the vmlinux audited with it",
        "A module's vermagic names the release it was built for; the loader compares it with the "
        "kernel's (same_magic()) and refuses another, unless the kernel has CONFIG_MODVERSIONS, which "
        "skips the release and compares the CRC of every symbol the module imports instead. Either way "
        "the vmlinux given is likely not the kernel that loads the module, and what the audit read from "
        "it for its modules (the ftrace_process_locs() loop that decides whether a zeroed record turns "
        "ftrace off) may not hold for the one that does. nop and apply refuse such a --kernel.",
    ),
}


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One finding. ``addr`` is None in relocatable files, where ``section`` + ``offset`` place it;
    image-wide findings have neither. ``evidence``: disassembly lines that show it; ``near``: see
    below."""

    kind: AnomalyKind
    severity: Severity
    message: str
    addr: int | None = None
    section: str | None = None
    offset: int | None = None
    file_offset: int | None = None
    function: str | None = None
    evidence: tuple[str, ...] = ()
    # A place in no function (a weak body): the function symbol before it, by which the finding is
    # known across rebuilds (its address moves with every change before it). SARIF's fingerprint.
    near: str | None = None

    @property
    def place(self) -> str:
        if self.addr is not None:
            return f"{self.addr:#x}"
        if self.section is not None and self.offset is not None:
            return f"{self.section}+{self.offset:#x}"
        return ""
