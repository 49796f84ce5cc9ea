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


def test_module_exclusion_selects_the_core_kernel_too() -> None:
    fp = parse("default keep\nnop trace_*:mod:!ext4\n")
    assert fp.for_file(None).decide("trace_x", ".text")[0] is Verb.NOP
    assert fp.for_file("jbd2").decide("trace_x", ".text")[0] is Verb.NOP
    assert fp.for_file("ext4").decide("trace_x", ".text")[0] is Verb.KEEP


def test_a_blank_module_is_every_module_and_a_blank_exclusion_the_core_kernel() -> None:
    every = parse("default keep\nnop :mod:\n")
    core = parse("default keep\nnop :mod:!\n")
    assert [every.for_file(m).decide("f", ".text")[0] for m in (None, "ext4")] == [Verb.KEEP, Verb.NOP]
    assert [core.for_file(m).decide("f", ".text")[0] for m in (None, "ext4")] == [Verb.NOP, Verb.KEEP]
