"""Shared fixtures: the corpus and the committed fixture binaries.

Tests that need the corpus, the cross toolchain or qemu skip with a reason on a user's machine;
with MCOUNTRW_REQUIRE_TOOLS=1 (CI) the same condition fails the test instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import Corpus, require_corpus
from click.testing import Result
from typer.testing import CliRunner

from rewriter.cli import app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@pytest.fixture(scope="session")
def corpus() -> Corpus:
    return require_corpus()


@pytest.fixture(scope="session")
def manifest() -> dict:
    path = FIXTURES / "manifest.json"
    if not path.exists():
        pytest.fail("fixtures/manifest.json is missing: run fixtures/build.sh")
    return json.loads(path.read_text())


# -- the CLI in process, for the tests of its options and messages ----------------------------------


def invoke(*args: object) -> Result:
    """``mcountrw ARGS...`` in this process (paths and numbers given as they are)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line(result: Result, code: int, label: str, *words: str) -> str:
    """``result`` exited ``code`` with one ``mcountrw: LABEL: ...`` line holding ``words``."""
    line = result.stderr.strip()
    assert result.exit_code == code and "\n" not in line, result.output
    assert line.startswith(f"mcountrw: {label}: ") and "Traceback" not in result.output, line
    for w in words:
        assert w in line, line
    return line
