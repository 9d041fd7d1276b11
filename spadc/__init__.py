"""spadc: a compiler for a small differentiable language, with exact and path-sampled adjoints.

The front end is available now: `check_file` / `check_text` give a checked IR program, which the
NumPy reference interpreter (`spadc.ir.interpret.evaluate`) can run. Compilation to machine code
and the `Model` API of INTERFACE.md come with the LLVM backend.
"""

from .errors import SpadcError
from .frontend import check_file, check_text
from .init import initial_params

__all__ = ["SpadcError", "check_file", "check_text", "initial_params"]
__version__ = "0.1.0"
