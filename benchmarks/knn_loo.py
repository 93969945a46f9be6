"""Leave-one-out kNN of runs' backbones on one labelled set: a tuning signal with every image
as a query, where a hash 80/20 split scores a fifth of them.

Each image is a query against all the others, under the probes' protocol (``evaluation.probe``):
features standardized with the set's mean and std, L2-normalized, cosine similarity, k = 20
neighbours voting with weights exp(sim / 0.07). On digits' train part that is 1,462 queries
instead of the tune split's 275, so one error moves the figure by 0.07 points instead of 0.36.
Meant for tuning on the train part (``--data digits:train``); val stays for the report.

Prints one line per feature set (raw pixels first, then each run's pooled backbone, read from
its latest checkpoint): errors, queries and top-1 accuracy. Last line: one JSON object.

    python benchmarks/knn_loo.py RUN [RUN ...] [--data digits:train]
"""

from __future__ import annotations

import argparse
import json

import torch


def loo_errors(features: torch.Tensor, labels: torch.Tensor, k: int | None = None) -> int:
    """Misclassified images when each row of ``features`` (N, D) votes among its ``k`` nearest
    other rows (default: the probe's), by the kNN probe's protocol; ``labels`` (N,) int64."""
    from lejepa_ray.config import ProbeConfig
    from lejepa_ray.evaluation.probe import knn_vote, standardize

    probe = ProbeConfig()
    everyone = torch.zeros(len(features), dtype=torch.bool)  # no query: all rows are the bank
    x = torch.nn.functional.normalize(standardize(features, everyone), dim=1)
    sims = x @ x.T
    sims.fill_diagonal_(-2.0)  # below any cosine: an image is never its own neighbour
    k = min(k or probe.k, len(x) - 1)  # the diagonal is never among the k
    predicted = knn_vote(sims, labels, int(labels.max()) + 1, k, probe.temperature)
    return int((predicted != labels).sum())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run or checkpoint directories")
    parser.add_argument("--data", default="digits:train", help="labelled images (a source)")
    parser.add_argument("--max_images", type=int, default=5000)
    args = parser.parse_args(argv)

    from lejepa_ray.data.sources import data_from_arg
    from lejepa_ray.evaluation.frozen import load_frozen
    from lejepa_ray.evaluation.probe import embed, load_labelled, raw_pixels

    torch.set_num_threads(1)  # the same arithmetic from run to run
    out: dict = {"data": args.data, "errors": {}}
    data = None
    for run in args.runs:
        encoder, size = load_frozen(run)
        if data is not None and data.images.shape[-1] != size:
            raise SystemExit(f"{run} was trained at {size} px, the runs before it at another size")
        if data is None:
            # Generated sources (digits) render at the run's size, as the probes draw them.
            data = load_labelled(data_from_arg(args.data, size), size, args.max_images)
            out["queries"] = n = len(data.labels)
            out["errors"]["raw pixels"] = loo_errors(raw_pixels(data), data.labels)
        with torch.no_grad():
            out["errors"][run] = loo_errors(embed(encoder, data.images), data.labels)
    for name, errors in out["errors"].items():
        print(f"{name:40s} {errors:4d} errors of {n}: top-1 {1 - errors / n:.4f}")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
