"""Freed CPU memory kept for reuse, so that large activations are not page-faulted in anew at every step.

glibc's malloc hands a block of more than 32 MiB (its largest ``mmap`` threshold on 64-bit systems) straight to
the kernel when it is freed, and maps it afresh, zeroed page by page, the next time one is asked for. A DAPS step at
``cifar10`` with B = 256 allocates and frees dozens of such blocks (the encoder's activations over B*K = 2,048 codes
of 64 tokens, the decoder's over 2,048 images: 512 MiB each), and the page faults cost 6.7 s of its 23.3 on a CPU
core (BENCHMARKS.md, "Freed memory kept for reuse").
:func:`keep_freed_memory` asks malloc (``mallopt``) to serve every block from its heap and to keep what is freed there
for the next step, at the price of a higher resident set (the heap keeps its high-water mark and some of its
fragments). It changes no value computed, only where the memory comes from; it applies to the whole process, and
only where the C library is glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1
"""Freed memory at the top of the heap that malloc keeps rather than returns (mallopt takes a C int: 2 GiB)."""


@functools.cache
def keep_freed_memory() -> bool:
    """Serve every allocation of this process from malloc's heap and keep freed memory there (up to
    :data:`KEEP_UP_TO` at its top). True when glibc took both settings; False (and nothing changed) elsewhere. Once
    per process: later calls return the first answer."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc's own symbol: other C libraries' mallopt differ
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
