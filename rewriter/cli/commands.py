"""Imports every command module so that each registers its commands on ``rewriter.cli.app``."""

from rewriter.cli import plans, rewrite  # noqa: F401
