"""ELF64 PowerPC files: their byte layouts, the image as numpy tables, compressed modules, signatures.

Sites, plans and logs build on this package; from the rest of ``rewriter`` it takes only the leaf
modules that import nothing of the tool's higher layers: the errors (``errors``), the address types
(``ppc``), integer-column sets (``arrays``), file opening (``reading``) and escaping (``prose``).
"""
