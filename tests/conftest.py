"""Shared fixtures: the corpus and the committed fixture binaries.

Tests that need the corpus, the cross toolchain or qemu skip with a reason on a user's machine;
with MCOUNTRW_REQUIRE_TOOLS=1 (CI) the same condition fails the test instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from boot import Corpus, require_corpus

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
