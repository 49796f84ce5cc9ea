"""ELF64 PowerPC files: their byte layouts, the image as numpy tables, compressed modules, atomic output.

Sites, plans and logs build on this package; it takes only the errors (``rewriter.errors``) and the
address types (``rewriter.ppc``) from the rest of ``rewriter``.
"""
