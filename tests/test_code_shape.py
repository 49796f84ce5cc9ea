"""The shape of the code in rewriter/: small functions, modules that say what they are for, and a
README layout table that matches the tree.

* No function or method is longer than :data:`MAX_LINES` lines, from its ``def`` line to its last
  line (docstring and comments included), unless :data:`DATA_TABLES` lists it as a pure data table.
* Every module starts with a docstring whose first line says what the module is for: not empty,
  and not just the module's name.
* The README's "Layout" table names every module under rewriter/ and nothing that does not exist.

Each checker takes source text or a tree, so the tests below also show that each one can fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from conftest import ROOT

PACKAGE = ROOT / "rewriter"
MAX_LINES = 60

DATA_TABLES: dict[str, str] = {}
"""``path:function`` -> why it is a pure data table and may be longer. None is today."""


def _modules() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40 and PACKAGE / "sites.py" in files and PACKAGE / "elf" / "__init__.py" in files
    return files


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- function length --------------------------------------------------------------------------


def long_functions(source: str, name: str) -> list[str]:
    """``name:line function length`` for every function in ``source`` longer than MAX_LINES lines
    (nested functions and methods too), unless DATA_TABLES lists it."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1
        if length > MAX_LINES and f"{name}:{node.name}" not in DATA_TABLES:
            out.append((node.lineno, f"{name}:{node.lineno} {node.name} {length}"))
    return [text for _, text in sorted(out)]


def test_no_function_in_rewriter_is_over_60_lines() -> None:
    found = [f for p in _modules() for f in long_functions(p.read_text(), _rel(p))]
    assert not found, "split into named steps:\n" + "\n".join(found)


def _function_of(lines: int, name: str) -> str:
    """A function of exactly ``lines`` lines (def line, docstring, body)."""
    body = "".join(f"    x += {i}\n" for i in range(lines - 4))
    return f'def {name}(x: int) -> int:\n    """Planted."""\n    x += 0\n{body}    return x\n'


def test_the_length_check_fails_on_a_planted_61_line_function() -> None:
    planted = "import os\n\n\n" + _function_of(61, "too_long") + "\n\n" + _function_of(60, "just_fits")
    planted += "\n\nclass C:\n" + "".join("    " + line + "\n" for line in _function_of(70, "method").splitlines())
    assert long_functions(planted, "planted.py") == ["planted.py:4 too_long 61", "planted.py:130 method 70"]


# -- module docstrings ------------------------------------------------------------------------


def docstring_problem(source: str, path: PurePosixPath) -> str | None:
    """Why the first line of the module's docstring does not say what the module is for, or None."""
    doc = ast.get_docstring(ast.parse(source, str(path)))
    if not doc:
        return f"{path}: no module docstring"
    first = doc.splitlines()[0].strip()
    name = path.parent.name if path.name == "__init__.py" else path.stem
    words = re.sub(r"[^a-z0-9]+", " ", first.lower()).split()
    if not first or words in ([name], ["rewriter", name], [name, "py"], ["the", name, "module"]):
        return f"{path}: the docstring's first line {first!r} does not say what the module is for"
    return None


def test_every_module_says_what_it_is_for() -> None:
    found = [docstring_problem(p.read_text(), PurePosixPath(_rel(p))) for p in _modules()]
    assert not [f for f in found if f], "\n".join(f for f in found if f)


def test_the_docstring_check_fails_on_planted_modules() -> None:
    where = PurePosixPath("rewriter/widgets.py")
    assert docstring_problem("import os\n", where) == "rewriter/widgets.py: no module docstring"
    assert docstring_problem('"""\n\nWidgets."""\n', where) is not None  # an empty first line
    assert docstring_problem('"""Widgets."""\n', where) is not None
    assert docstring_problem('"""rewriter.widgets"""\n', where) is not None
    assert docstring_problem('"""The widgets module."""\n', PurePosixPath("rewriter/widgets/__init__.py")) is not None
    assert docstring_problem('"""Widgets: the parts a gadget is made of."""\n', where) is None


# -- the README's layout table ----------------------------------------------------------------

_NAMED = re.compile(r"`([\w./]+(?:\.py|/))`")  # a backticked module or package path


def layout_rows(readme: str) -> Iterator[tuple[list[str], list[str]]]:
    """The ``rewriter/`` rows of the table under "## Layout": the backticked paths of the first
    cell, and those of the description."""
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`rewriter/"):
            yield _NAMED.findall(cells[0]), _NAMED.findall(" | ".join(cells[1:]))


def layout_paths(readme: str) -> set[str]:
    """Every ``rewriter/`` path the layout table names, resolved. In the first cell, the first path
    is written from the repository root and the others from its directory (``rewriter/plan.py``,
    ``check.py``); in the description, a file is named from the row's package (``main.py`` in the
    ``rewriter/cli/`` row) or, in a row of modules, from their directory (``cli/exits.py``)."""
    out = set()
    for heads, named in layout_rows(readme):
        first = PurePosixPath(heads[0])
        base = first.parent
        package = first if heads[0].endswith("/") else base
        out.add(heads[0])
        out.update(f"{base / h}" for h in heads[1:])
        out.update(f"{package / n}" + ("/" if n.endswith("/") else "") for n in named)
    return out


def layout_problems(readme: str, root: Path) -> list[str]:
    """Paths the table names that do not exist, and modules (and packages) under ``root/rewriter``
    that it does not name. A package's ``__init__.py`` is named by its directory."""
    named = layout_paths(readme)
    missing = sorted(p for p in named if not (root / p).exists())
    files = sorted((root / "rewriter").rglob("*.py"))
    wanted = {
        (p.parent.relative_to(root).as_posix() + "/") if p.name == "__init__.py" else p.relative_to(root).as_posix()
        for p in files
        if p.parent != root / "rewriter" or p.name != "__init__.py"
    }
    return [f"named but absent: {p}" for p in missing] + [f"not named: {p}" for p in sorted(wanted - named)]


def test_the_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(list(layout_rows(readme))) >= 10
    problems = layout_problems(readme, ROOT)
    assert not problems, "\n".join(problems)


PLANTED_README = """# x

## Layout

| path | what |
| --- | --- |
| `rewriter/a.py`, `gone.py` | a and a module that went |
| `rewriter/pkg/` | a package: its `one.py` |
| `fixtures/` | not the package |

## Next
| `rewriter/b.py` | after the table: not read |
"""


def test_the_layout_check_fails_on_a_planted_tree(tmp_path: Path) -> None:
    for rel in ("rewriter/__init__.py", "rewriter/a.py", "rewriter/b.py", "rewriter/pkg/__init__.py",
                "rewriter/pkg/one.py", "rewriter/pkg/two.py", "rewriter/sub/__init__.py"):  # fmt: skip
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('"""Planted."""\n')
    assert layout_problems(PLANTED_README, tmp_path) == [
        "named but absent: rewriter/gone.py",
        "not named: rewriter/b.py",
        "not named: rewriter/pkg/two.py",
        "not named: rewriter/sub/",
    ]
