"""Reference vs fast interpolative decomposition: wall time and reconstruction error.

Runs ``statlab.reference.interpolative_decomposition`` (SciPy CPQR, CPU) and
``statlab.fast.interpolative_decomposition`` (Gram route in fp64 and fp32, Gaussian
sketch route) on the same seeded test matrices and prints one JSON document to stdout
(progress goes to stderr)::

    python benchmarks/bench_id.py --sizes all > benchmarks/results/bench_id_cpu.json

Test matrix (DESIGN §1.1): ``Z = G diag(s) Q (N, n)`` with ``G`` Gaussian / sqrt(N)
(nearly orthonormal columns), ``Q`` orthogonal (QR of a Gaussian) and the spectrum
``s_j = max(exp(-j / (n/8)), 1e-3)`` decaying to a noise floor; ``k = n/2``. Sizes:
``(16384, 768)`` and ``(65536, 1536)`` (the MLP activations of MiniLM/SmolLM2-sized
modules over 64k calibration tokens) on every device, and on CUDA only
``(262144, 11008)`` (Llama-2-7B's MLP width; reference and sketch skipped there: the
CPU pivoted QR of it takes hours).

Per case and method: ``seconds`` (best of ``--repeats``; the ID call only, the matrix
already on the device), ``rel_error = ||Z - Z[:, idx] coef||_F / ||Z||_F`` (streamed in
fp64 by ``statlab.fast.reconstruction_error``) and ``overlap``, the fraction of the kept
set shared with the baseline (the reference, else ``fast_gram_fp64``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np
import scipy
import torch

import statlab
import statlab.fast as fast
import statlab.reference as ref

SIZES = {
    "small": [(16384, 768)],
    "all": [(16384, 768), (65536, 1536)],
}
CUDA_ONLY_SIZES = [(262144, 11008)]
NOISE_FLOOR = 1e-3
SEED = 0
GENERATION_BLOCK = 16384  # rows generated at a time, so Z is the only (N, n) buffer


def spectrum(n: int) -> torch.Tensor:
    """``s_j = max(exp(-j / (n/8)), 1e-3)``, shape (n,), fp64."""
    j = torch.arange(n, dtype=torch.float64)
    return torch.exp(-j / (n / 8)).clamp_min(NOISE_FLOOR)


def test_matrix(N: int, n: int, *, device, dtype, seed: int = SEED) -> torch.Tensor:
    """Seeded ``Z = G diag(s) Q (N, n)``, generated block by block on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, device=device, dtype=torch.float64))
    sQ = spectrum(n).to(device)[:, None] * Q  # (n, n) = diag(s) Q
    Z = torch.empty(N, n, device=device, dtype=dtype)
    for start in range(0, N, GENERATION_BLOCK):
        rows = min(GENERATION_BLOCK, N - start)
        G = torch.randn(rows, n, generator=gen, device=device, dtype=torch.float64) / math.sqrt(N)
        Z[start : start + rows] = (G @ sQ).to(dtype)  # (rows, n)
    return Z


def spectrum_rank_k_error(n: int, k: int) -> float:
    """``(Σ_{j>=k} s_j²)^{1/2} / ||s||``: the best rank-k error for the nominal spectrum."""
    s2 = spectrum(n).square()
    return float((s2[k:].sum() / s2.sum()).sqrt())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, repeats: int, device: torch.device):
    """Best wall time of ``repeats`` calls of ``run()`` and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def as_fast_id(result: ref.ID, device) -> fast.ID:
    """The reference's result as tensors: the two ``ID`` classes have the same fields."""
    return fast.ID(**{f.name: torch.from_numpy(getattr(result, f.name)).to(device)
                      for f in dataclasses.fields(fast.ID)})


def overlap(idx, baseline) -> float:
    a, b = set(idx.tolist()), set(baseline.tolist())
    return len(a & b) / max(len(b), 1)


def fast_methods(device: torch.device, skip_sketch: bool):
    """Name -> a function returning the keyword arguments of ``fast.interpolative_decomposition``.

    The arguments are built per call (a fresh seeded generator), so every repeat of the
    sketch draws the same ``S``.
    """
    methods = {
        "fast_gram_fp64": lambda: dict(method="gram", precision="fp64"),
        "fast_gram_fp32": lambda: dict(method="gram", precision="fp32"),
    }
    if not skip_sketch:
        methods["fast_sketch"] = lambda: dict(
            method="sketch",
            sketch="gaussian",
            rng=torch.Generator(device=device).manual_seed(SEED),
        )
    return methods


def run_case(Z: torch.Tensor, k: int, *, repeats: int, reference=None, skipped=None):
    """Time every fast method on ``Z`` (already on its device) beside a reference result.

    ``reference`` is ``(seconds, ref.ID)`` or None; ``skipped`` maps method names to the
    reason they were not run.
    """
    device = Z.device
    N, n = Z.shape
    skipped = dict(skipped or {})
    methods, baseline_idx = {}, None
    if reference is not None:
        seconds, result = reference
        d = as_fast_id(result, device)
        methods["reference"] = {
            "seconds": seconds,
            "rel_error": fast.reconstruction_error(Z, d),
            "overlap": 1.0,
            "device": "cpu",
        }
        baseline_idx = d.idx
    for name, kwargs in fast_methods(device, "fast_sketch" in skipped).items():
        print(f"  {name} on {device} ...", file=sys.stderr, flush=True)
        seconds, d = timed(lambda: fast.interpolative_decomposition(Z, k, **kwargs()), repeats, device)
        if baseline_idx is None:
            baseline_idx = d.idx  # fast_gram_fp64 stands in for a skipped reference
        methods[name] = {
            "seconds": seconds,
            "rel_error": fast.reconstruction_error(Z, d),
            "overlap": overlap(d.idx, baseline_idx),
            "identical_idx": bool(torch.equal(d.idx.cpu(), baseline_idx.cpu())),
            "device": str(device),
        }
    if "reference" in methods and "fast_gram_fp64" in methods:
        methods["fast_gram_fp64"]["speedup_vs_reference"] = (
            methods["reference"]["seconds"] / methods["fast_gram_fp64"]["seconds"]
        )
    return {
        "shape": [N, n],
        "k": k,
        "device": str(device),
        "dtype": str(Z.dtype).removeprefix("torch."),
        "overlap_baseline": "reference" if reference is not None else "fast_gram_fp64",
        "spectrum_rank_k_error": spectrum_rank_k_error(n, k),
        "methods": methods,
        "skipped": skipped,
    }


def machine_info(devices, load_at_start: float) -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        # other work on the machine slows the multithreaded BLAS calls a lot: say how busy it was
        "load_average_1min_at_start": load_at_start,
        "load_average_1min_at_end": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
        "thread_env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "statlab": statlab.__version__,
        "devices": {},
    }
    for device in devices:
        if device.type == "cuda":
            info["devices"]["cuda"] = torch.cuda.get_device_name(device)
        else:
            info["devices"]["cpu"] = info["cpu_model"]
    return info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pick_devices(choice: str):
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device is visible to torch (use --device cpu or auto)")
    if choice == "cpu":
        return [torch.device("cpu")]
    if choice == "cuda":
        return [torch.device("cuda")]
    return [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])


def warm_up(device: torch.device) -> None:
    """One small call per route, so CUDA context and cuBLAS set-up are not timed."""
    Z = test_matrix(512, 64, device=device, dtype=torch.float64, seed=SEED + 1)
    for kwargs in fast_methods(device, skip_sketch=False).values():
        fast.interpolative_decomposition(Z, 32, **kwargs())
    synchronize(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="all",
                        help="small: (16384, 768) only; all: also (65536, 1536), and (262144, 11008) on CUDA")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many calls per method")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="auto: the CPU, and CUDA too when torch sees it")
    parser.add_argument("--skip-reference", action="store_true",
                        help="skip the SciPy pivoted QR (overlaps are then against fast_gram_fp64)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    load_at_start = os.getloadavg()[0]
    devices = pick_devices(args.device)
    for device in devices:
        warm_up(device)
    sizes = [(N, n, False) for N, n in SIZES[args.sizes]]
    if args.sizes == "all" and any(d.type == "cuda" for d in devices):
        sizes += [(N, n, True) for N, n in CUDA_ONLY_SIZES]

    cases = []
    for N, n, cuda_only in sizes:
        k = n // 2
        if cuda_only:
            # fp32 like real activations: fp64 would take 23 GB, and the Gram casts per batch anyway
            print(f"case {N} x {n}, k = {k} (CUDA only)", file=sys.stderr, flush=True)
            Z = test_matrix(N, n, device=torch.device("cuda"), dtype=torch.float32)
            reason = "CPU pivoted QR of this size takes hours"
            cases.append(run_case(Z, k, repeats=args.repeats,
                                  skipped={"reference": reason, "fast_sketch": reason}))
            del Z
            torch.cuda.empty_cache()
            continue

        print(f"case {N} x {n}, k = {k}", file=sys.stderr, flush=True)
        Z_cpu = test_matrix(N, n, device=torch.device("cpu"), dtype=torch.float64)
        reference, skipped = None, {}
        if args.skip_reference:
            skipped["reference"] = "--skip-reference"
        else:
            print("  reference (scipy CPQR) on cpu ...", file=sys.stderr, flush=True)
            Z_np = Z_cpu.numpy()  # shares memory with Z_cpu
            reference = timed(lambda: ref.interpolative_decomposition(Z_np, k), args.repeats,
                              torch.device("cpu"))
        for device in devices:
            Z = Z_cpu.to(device)
            cases.append(run_case(Z, k, repeats=args.repeats, reference=reference, skipped=skipped))
            del Z
        del Z_cpu, reference

    document = {
        "benchmark": "bench_id",
        "command": "python benchmarks/bench_id.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "matrix": "Z = G diag(s) Q, G Gaussian/sqrt(N), Q orthogonal, "
                  "s_j = max(exp(-j/(n/8)), 1e-3), seed 0; k = n/2",
        "machine": machine_info(devices, load_at_start),
        "cases": cases,
    }
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
