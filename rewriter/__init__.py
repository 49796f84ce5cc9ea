"""mcountrw: see, change and prove the ftrace call sites of PowerPC64 Linux kernels."""

__version__ = "0.1.0"
