"""``compiled``: numba.njit(cache=True, nogil=True) for gatelens' hot loops (summaries, cell kernels).

numba compiles a function on its first call and caches the machine code in __pycache__ beside
the function's file, else in the user's cache directory (~/.cache/numba), or in
$NUMBA_CACHE_DIR when set: later processes, every Ray task among them, load it instead. Where
none is writable the function is compiled in each process rather than failing the import.
"""

from __future__ import annotations

import warnings

import numba


def compiled(fn=None, **options):
    """``numba.njit(cache=True, nogil=True, **options)``, uncached where numba finds no writable cache.

    Use bare (``@compiled``) or with extra njit options (``@compiled(error_model="numpy")``).
    """
    if fn is None:
        return lambda f: compiled(f, **options)
    try:
        return numba.njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available for file ..."
        warnings.warn(f"{fn.__module__}: numba finds no writable cache directory (__pycache__ beside "
                      f"its file, ~/.cache/numba or $NUMBA_CACHE_DIR); {fn.__name__} is compiled in "
                      "every process, a few seconds each", RuntimeWarning)
        return numba.njit(nogil=True, **options)(fn)
