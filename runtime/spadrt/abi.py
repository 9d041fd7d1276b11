"""The version of the compiled kernels' binary interface (spadc/backend/kernels.py documents it).

A library built by `spadc build` records the version it was built for; `spadrt.load` refuses a
library whose version differs. Raise it whenever a kernel signature or the layout's meaning changes.
"""

ABI_VERSION = 2
