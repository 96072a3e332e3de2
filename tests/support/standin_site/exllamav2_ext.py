"""Stand-in for exllamav2's compiled CUDA extension (`exllamav2_ext`).

The real exllamav2 wheel imports this module at import time (ext.py) and otherwise JIT-compiles 47 CUDA
sources. Config parsing, the model graph, lazy caches and memory accounting never call into it, so an empty
module is enough for them. Put this directory on PYTHONPATH (subprocesses) or call
`tests.support.standin.install_standin_ext()` (in-process).
"""

STANDIN = True
