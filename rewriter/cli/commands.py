"""Imports every command module so that each registers its commands on ``rewriter.cli.app``."""
