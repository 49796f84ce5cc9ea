"""Policy patterns select what the same pattern written to set_ftrace_filter selects (the kernel's
matching: kernel/trace/ftrace.c match_records(), lib/glob.c glob_match()); qemu shows it in the
last commit of this series."""

from __future__ import annotations

from rewriter.policy import Verb, parse


def test_a_backslash_escapes_the_next_character_as_in_the_kernels_glob() -> None:
    fp = parse("default keep\nnop \\v\\f\\s_read\nnop x\\*\n").for_file(None)
    assert fp.decide("vfs_read", ".text")[0] is Verb.NOP
    assert fp.decide("xy", ".text")[0] is Verb.KEEP  # `\*` is a star, not a wildcard
    assert fp.decide("x*", ".text")[0] is Verb.NOP
