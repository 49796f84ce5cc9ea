"""rewriter/ppc/ is the one home of instruction knowledge: no other module shifts out an opcode or a
register field, or spells an instruction word or an opcode mask.

The checker reads the syntax tree, not the text, so comments, docstrings and messages may quote
``w >> 26`` freely, and shifts that are not about instructions (a place's section index, MiB in a
message) pass. What it flags:

* a shift by 26 (the primary opcode, bits 0-5), either way;
* a register-field or extended-opcode extraction: ``(x >> 21|16|11|6) & 31`` or
  ``(x >> 1) & 0x3FF|0x1FF``;
* an integer constant in [2**26, 2**32): an instruction word or an opcode mask (``0x4800_0000``,
  ``0xFC00_0003``, ``0x7C08_02A6``), unless it is listed in :data:`DATA` as the data it is;
* the branch offset masks ``0x03FF_FFFC`` (I-form LI) and ``0xFFFC`` (B-form BD).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "rewriter"
HOME = PACKAGE / "ppc"

DATA = {
    0xFFFF_FFFF: "all ones in 32 bits (a word-sized data mask)",
    0x6FFF_FFF9: "DT_RELACOUNT, an ELF dynamic tag",
    0x184D_2A50: "the first zstd skippable-frame magic number (rewriter/elf/compress.py)",
    0x184D_2A60: "one past the last zstd skippable-frame magic number",
}
"""32-bit constants outside ppc/ that are data, not instructions."""

PRIMARY_SHIFT = 26
FIELD_SHIFTS = {21, 16, 11, 6}  # RT/RS, RA, RB, RC/MB
FIELD_MASKS = {31}
XO_MASKS = {0x3FF, 0x1FF}  # X-form and XO-form extended opcodes, above Rc
BRANCH_MASKS = {0x03FF_FFFC, 0xFFFC}


def _int(node: ast.AST) -> int | None:
    """A constant int, also inside ``np.uint32(...)`` and the like."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        return _int(node.args[0])
    return None


def _shift_by(node: ast.AST) -> int | None:
    return _int(node.right) if isinstance(node, ast.BinOp) and isinstance(node.op, ast.RShift) else None


def _shifts_by(node: ast.BinOp, amount: int) -> bool:
    return isinstance(node.op, (ast.RShift, ast.LShift)) and _int(node.right) == amount


def _findings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and _shifts_by(node, PRIMARY_SHIFT):
            yield node.lineno, "primary opcode shift (26)"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
            for shifted, masked in ((node.left, node.right), (node.right, node.left)):
                by, mask = _shift_by(shifted), _int(masked)
                if (by in FIELD_SHIFTS and mask in FIELD_MASKS) or (by == 1 and mask in XO_MASKS):
                    yield node.lineno, f"instruction field extraction (>> {by}) & {mask:#x}"
        value = _int(node) if isinstance(node, ast.Constant) else None
        if value is not None and value in BRANCH_MASKS:
            yield node.lineno, f"branch offset mask {value:#x}"
        elif value is not None and 1 << PRIMARY_SHIFT <= value < 1 << 32 and value not in DATA:
            yield node.lineno, f"instruction word or opcode mask {value:#010x}"


def isa_violations(path: Path) -> list[str]:
    """``path:line: what`` for every instruction-level bit trick in one Python file."""
    tree = ast.parse(path.read_text(), str(path))
    return [f"{path}:{line}: {what}" for line, what in sorted(set(_findings(tree)))]


def test_no_opcode_masks_or_shifts_outside_ppc() -> None:
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if HOME not in p.parents]
    assert len(files) > 20 and (PACKAGE / "flow.py") in files
    found = [v for p in files for v in isa_violations(p)]
    assert not found, "\n".join(found)


def test_ppc_itself_is_where_the_bits_are() -> None:
    """The checker is not blind: the home holds exactly what it forbids elsewhere."""
    found = [v for p in sorted(HOME.rglob("*.py")) for v in isa_violations(p)]
    assert any("primary opcode shift" in v for v in found)
    assert any("field extraction" in v for v in found)
    assert any("0x7c0802a6" in v for v in found)  # mflr r0


PLANTED = '''
"""A docstring may say w >> 26 and 0x4800_0001."""
PLACE_SHIFT = 40


def opcode(w):
    return w >> 26  # planted: line 7


def rt(w):
    return (w >> 21) & 31  # planted: line 11


def xo(w):
    return 0x3FF & (w >> 1)  # planted: line 15


BL = 0x4800_0001  # planted: line 18
MASK = np.uint32(0xFC00_0003)  # planted: line 19
LI = 0x03FF_FFFC  # planted: line 20


def fine(index, place, size):
    message = f"more than {size >> 20} MiB"  # not an instruction: a size in MiB
    other = (index >> 16) & 0xFF  # not a 5-bit field
    return index << PLACE_SHIFT | place, place // 4, message, 0xFFFF_FFFF, other  # w >> 26 in a comment
'''


def test_the_checker_fails_on_planted_violations(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(PLANTED)
    found = isa_violations(planted)
    assert [int(v.split(":")[1]) for v in found] == [7, 11, 15, 18, 19, 20]
    assert "primary opcode shift" in found[0] and "(>> 21) & 0x1f" in found[1] and "(>> 1) & 0x3ff" in found[2]
    assert "0x48000001" in found[3] and "0xfc000003" in found[4] and "branch offset mask 0x3fffffc" in found[5]
