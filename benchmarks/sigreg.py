"""SIGReg forward+backward: lejepa_ray.objective.sigreg against the textbook cos/sin implementation.

Each (implementation, size) is timed in a fresh subprocess so that peak memory is its own:
on CPU the peak resident set during the first forward+backward minus the resident set just
before it (Linux VmHWM, reset through /proc/self/clear_refs); on CUDA torch's peak allocation.
The parent process checks that both implementations agree (loss and gradient) before timing.

    python benchmarks/sigreg.py [--device cpu|cuda] [--repeats 7] [--threads N]

Prints a table, the speed and memory ratios, and last one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from lejepa_ray.objective.sigreg import quadrature, random_directions, sigreg
from lejepa_ray.train.memory import resident_bytes

SIZES = [(512, 512, 512), (2048, 256, 1024), (8192, 128, 256)]  # (N, D, num_slices)
STEP = 7


def textbook_sigreg(z: torch.Tensor, step: int, num_slices: int) -> torch.Tensor:
    """The baseline: every angle t_j·x materialized, cos and sin of all of them, autograd."""
    t, phi, weights = quadrature(device=z.device, dtype=z.dtype)
    x = z @ random_directions(z.shape[-1], num_slices, step, device=z.device, dtype=z.dtype)
    angles = x.unsqueeze(-1) * t  # (N, slices, knots)
    err = (angles.cos().mean(-3) - phi).square() + angles.sin().mean(-3).square()
    return ((err @ weights) * x.shape[-2]).mean()


IMPLEMENTATIONS = {
    "lejepa_ray": lambda z, step, slices: sigreg(z, step, slices),
    "textbook": textbook_sigreg,
}


def _forward_backward(fn, z: torch.Tensor, slices: int, device: str) -> None:
    fn(z, STEP, slices).backward()
    z.grad = None
    if device == "cuda":
        torch.cuda.synchronize()


def run_case(impl: str, n: int, d: int, slices: int, device: str, repeats: int) -> dict:
    """Time one implementation at one size in this (fresh) process."""
    fn = IMPLEMENTATIONS[impl]
    z = torch.randn(n, d, device=device, generator=torch.Generator(device).manual_seed(0))
    z.requires_grad_(True)
    # Peak memory of the first call, before any allocator cache holds freed blocks.
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        _forward_backward(fn, z, slices, device)
        peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = resident_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the resident high-water mark to the current RSS
        _forward_backward(fn, z, slices, device)
        peak_mib = (resident_bytes("VmHWM") - before) / 2**20
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _forward_backward(fn, z, slices, device)
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "peak_mib": peak_mib}


def check_agreement(n: int, d: int, slices: int, device: str) -> dict:
    """Loss and gradient of both implementations on the same input (float32)."""
    out = {}
    for impl, fn in IMPLEMENTATIONS.items():
        z = torch.randn(n, d, device=device, generator=torch.Generator(device).manual_seed(0))
        z.requires_grad_(True)
        loss = fn(z, STEP, slices)
        loss.backward()
        out[impl] = (loss.detach(), z.grad)
    (loss_a, grad_a), (loss_b, grad_b) = out["lejepa_ray"], out["textbook"]
    return {
        "loss_rel_diff": float((loss_a - loss_b).abs() / loss_b.abs()),
        "grad_rel_diff": float((grad_a - grad_b).norm() / grad_b.norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--case", nargs=4, metavar=("IMPL", "N", "D", "SLICES"), help=argparse.SUPPRESS
    )  # internal: one case in a child process
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.case:
        impl, n, d, slices = args.case[0], *map(int, args.case[1:])
        print(json.dumps(run_case(impl, n, d, slices, args.device, args.repeats)))
        return

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"device {device_name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"float32, forward+backward, median of {args.repeats}"
    )
    header = f"{'N':>6} {'D':>5} {'slices':>6} {'impl':>10} {'median ms':>10} {'peak MiB':>9}"
    print(header)
    results = []
    for n, d, slices in SIZES:
        row = {"N": n, "D": d, "slices": slices, **check_agreement(n, d, slices, args.device)}
        for impl in IMPLEMENTATIONS:
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
                "--case",
                impl,
                str(n),
                str(d),
                str(slices),
            ]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            case = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[
                    -1
                ]
            )
            row[impl] = case
            print(
                f"{n:>6} {d:>5} {slices:>6} {impl:>10} {case['median_ms']:>10.1f} "
                f"{case['peak_mib']:>9.1f}"
            )
        row["speedup"] = row["textbook"]["median_ms"] / row["lejepa_ray"]["median_ms"]
        row["memory_ratio"] = row["textbook"]["peak_mib"] / max(row["lejepa_ray"]["peak_mib"], 1e-3)
        print(
            f"{'':>19} speed-up {row['speedup']:.2f}x, peak-memory ratio "
            f"{row['memory_ratio']:.1f}x, loss rel diff {row['loss_rel_diff']:.1e}, "
            f"grad rel diff {row['grad_rel_diff']:.1e}"
        )
        results.append(row)
    print(
        json.dumps(
            {
                "device": device_name,
                "threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
