"""LLVM code generation for spadc programs: memory plans, emitters, kernels and the JIT.

`emitters` is imported first, whatever module of the package is asked for: it gathers the
emitters of `gates`, `linalg` and `conv`, which use its helpers, at its end (an import of `gates`
or `conv` first would find it half made)."""

from . import emitters  # noqa: F401
