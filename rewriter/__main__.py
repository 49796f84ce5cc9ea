from rewriter.cli import run

run()
