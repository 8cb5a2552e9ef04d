"""One BLAS thread around numerical work, for bit-identical results on every engine.

Summation order inside BLAS depends on the thread count, and each engine runs
the apps in processes with different defaults (Ray sets OMP_NUM_THREADS=1, a
plain process uses every core). Pinning one thread removes that difference.
"""

from __future__ import annotations

from functools import lru_cache

from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    # Building a controller scans the loaded libraries (~1 ms): do it once.
    return ThreadpoolController()


def single_thread():
    """Context manager limiting every loaded BLAS/OpenMP pool to one thread."""
    return _controller().limit(limits=1)
