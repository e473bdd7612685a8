"""SciPy's BLAS threads on an idle and on a busy CPU: why statlab limits them (statlab.threads), as JSON.

Times SciPy's pivoted QR of a (8000, 1536) matrix and LAPACK's pivoted
Cholesky (dpstrf) of a (3072, 3072) Gram with 1 and with all of the CPU's
OpenBLAS threads, first alone, then beside a torch job using every core
(a matrix-product loop in a second process). Each figure is the median of
three runs.

Usage: python benchmarks/bench_threads.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

LOAD = "import time, torch\na = torch.randn(1500, 1500)\nwhile True: a @ a\n"


def timings(repeats: int) -> dict:
    import numpy as np
    import scipy.linalg
    import scipy.linalg.lapack
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    Z = rng.standard_normal((8000, 1536))
    A = rng.standard_normal((12000, 3072))
    G = A.T @ A
    cases = {"pivoted_qr_8000x1536": lambda: scipy.linalg.qr(Z, mode="economic", pivoting=True),
             "dpstrf_3072": lambda: scipy.linalg.lapack.dpstrf(G, tol=1e-10, lower=1)}
    out = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        with threadpool_limits(limits=threads, user_api="blas"):
            for name, run in cases.items():
                seconds = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    run()
                    seconds.append(round(time.perf_counter() - start, 3))
                out[f"{name}, {threads} BLAS threads"] = {"runs": seconds, "median": sorted(seconds)[len(seconds) // 2]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = {"benchmark": "threads", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "idle": timings(args.repeats)}
    load = subprocess.Popen([sys.executable, "-c", LOAD])
    try:
        time.sleep(2)
        result["beside a torch job on every core"] = timings(args.repeats)
    finally:
        load.kill()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
