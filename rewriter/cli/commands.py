"""Imports every command module so that each registers its commands on ``rewriter.cli.app``."""

from rewriter.cli import audit  # noqa: F401, I001 -- one line per command module owner
from rewriter.cli import plans, rewrite  # noqa: F401
from rewriter.cli import prenop  # noqa: F401
