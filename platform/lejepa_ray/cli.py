"""`lejepa-ray` command line. Subcommands parse arguments and call into the package."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lejepa_ray import __version__
from lejepa_ray.errors import ConfigError, LejepaRayError, TrainingStopped

# Distributions whose versions matter when reporting a problem.
_REPORTED = (
    "lejepa-ray",
    "torch",
    "torchvision",
    "ray",
    "timm",
    "accelerate",
    "pyarrow",
    "tensorboard",
    "numpy",
)


def _env(_: argparse.Namespace) -> int:
    """Print the versions of the stack and the accelerators torch can see."""
    for name in _REPORTED:
        try:
            print(f"{name:12s} {version(name)}")
        except PackageNotFoundError:
            print(f"{name:12s} not installed")
    # lazy: torch takes seconds to import; only `env` needs it, and --help must stay fast.
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(cuda)) or "none"
    print(f"{'cuda devices':12s} {cuda} ({names})")
    print(f"{'cpu threads':12s} {torch.get_num_threads()}")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    """Convert an image folder to checked, resumable parquet shards and print a summary."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.data.convert import convert_image_folder, format_summary

    with _progress("convert") as advance:
        summary = convert_image_folder(
            args.src,
            args.dst,
            shard_size_mb=args.shard_size_mb,
            workers=args.workers,
            max_pixels=args.max_pixels,
            progress=advance,
        )
    print(format_summary(summary, args.dst))
    return 0


@contextlib.contextmanager
def _progress(desc: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, opened at its first
    call: input refused before any work says so without an empty bar."""
    # lazy: tqdm is only for the commands that draw a bar; --help stays fast.
    from tqdm import tqdm

    bars: list[tqdm] = []

    def advance(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="img", desc=desc, file=sys.stderr))
        bars[0].update(done - bars[0].n)

    try:
        yield advance
    finally:
        for bar in bars:
            bar.close()


def _data_bench(args: argparse.Namespace) -> int:
    """Ray Data views stream against a DataLoader doing the same work; JSON line last."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.data import bench

    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.data.config import DataConfig, ViewConfig

    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.data.sources import source_from_arg

    source, path = source_from_arg(args.data)
    views = ViewConfig(
        global_size=args.global_size,
        local_size=args.local_size,
        global_views=args.global_views,
        local_views=args.local_views,
        kernels=args.kernels,
    )
    cfg = DataConfig(
        source=source,
        path=path,
        num_samples=args.num_samples,
        image_size=args.image_size,
        augment_on=args.augment_on,
        views=views,
        **({} if args.tasks_per_cpu is None else {"tasks_per_cpu": args.tasks_per_cpu}),
        **({} if args.task_units is None else {"task_units": args.task_units}),
    )
    bench.run(cfg, seconds=args.seconds, workers=args.workers, batch_size=args.batch_size)
    return 0


# The embedded default of `pretrain` and `sweep`: the CPU quickstart, package data
# (lejepa_ray/configs/, pyproject.toml's package-data), so an installed wheel has it as well as
# a checkout. A regular package's resources are files on disk, so this is a plain path.
QUICKSTART = Path(str(resources.files("lejepa_ray") / "configs" / "quickstart.yaml"))


def default_config() -> Path:
    """The packaged quickstart config, or a ConfigError saying what to pass instead."""
    if not QUICKSTART.is_file():
        raise ConfigError(
            f"no --config given and the packaged default config {QUICKSTART} is missing "
            "(an incomplete install of lejepa-ray: reinstall it); pass --config FILE, "
            "e.g. one of the repository's jobs/configs/*.yaml."
        )
    return QUICKSTART


def _pretrain(args: argparse.Namespace) -> int:
    """Validate the config, pretrain on Ray, probe, and say where everything is."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.config import load_config

    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.launch.driver import run

    path = args.config if args.config is not None else default_config()
    cfg = load_config(path, [*args.overrides, *(["logging.verbose=true"] if args.verbose else [])])
    result = run(cfg)
    minutes, seconds = divmod(round(result.train_seconds), 60)
    since = "" if result.resumed_from is None else f" (resumed at step {result.resumed_from})"
    print(f"\ntrained to step {cfg.optim.steps}{since} in {minutes} min {seconds} s")
    if result.probes_during:
        print(during_table(result.probes_during))
    if result.probe is not None:
        print(result.probe.table())
    print(f"TensorBoard: tensorboard --logdir {result.run_dir}/tensorboard")
    print(f"checkpoint:  {result.checkpoint}")
    print(f"config:      {result.run_dir}/config.yaml")
    return 0


def during_table(records: dict[int, dict]) -> str:
    """The probes during training, a line per probed step."""
    lines = ["probes during training (trained backbone, kNN / linear top-1)"]
    for step, r in sorted(records.items()):
        if "error" in r:
            lines.append(f"  step {step:>6}  failed: {r['error']}")
            continue
        linear = r.get("probe/linear_top1")
        cells = f"{r['probe/knn_top1']:.3f} / " + ("-" if linear is None else f"{linear:.3f}")
        lines.append(f"  step {step:>6}  {cells}")
    return "\n".join(lines)


def _export(args: argparse.Namespace) -> int:
    """Write a checkpoint's backbone in timm's hub layout and say how to load it."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.evaluate.export import ONNX_FILE, PROJECTOR_FILE, WEIGHTS_FILE, export

    result = export(args.source, args.out_dir, format=args.format)
    out = result.out_dir
    print(
        f"exported {result.architecture} ({result.parameters / 1e6:.1f}M parameters) from "
        f"{result.checkpoint} (step {result.step}) to {out}/{WEIGHTS_FILE} + config.json; "
        f"projector: {out}/{PROJECTOR_FILE}"
    )
    print(f"load it: {result.load_line()}")
    if result.onnx_max_abs_diff is not None:
        print(
            f"ONNX: {out}/{ONNX_FILE} (uint8 images (N, 3, S, S) -> features (N, D)); "
            f"onnxruntime matches PyTorch within {result.onnx_max_abs_diff:.1e}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Frozen-feature probes of a checkpoint or export; a summary, then one JSON line."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.evaluate.frozen import evaluate

    result = evaluate(
        args.source,
        args.data,
        args.probe,
        features=args.features,
        val_data=args.val_data,
        baseline=args.baseline,
        size=args.size,
        max_samples=args.max_samples,
        k=args.k,
        temperature=args.temperature,
    )
    parts = [
        f"{name} top-1 {value:.3f}"
        for name, value in (
            ("kNN", result.knn_top1),
            ("linear", result.linear_top1),
            ("raw-pixel kNN", result.raw_knn_top1),
            ("raw-pixel linear", result.raw_linear_top1),
        )
        if value is not None
    ]
    scored = (
        f"{result.val_data} ({result.queries} images)"
        if result.val_data
        else (f"{result.queries} hash-split queries")
    )
    of = "" if result.features == "backbone" else " (projector outputs)"
    print(
        f"{', '.join(parts)}{of} at {result.image_size} px: fitted on {result.data} "
        f"({result.bank} images), scored on {scored}, {result.classes} classes"
    )
    print(result.to_json())
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Embed a source's images with a frozen backbone into parquet; progress, then a summary."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.launch.embed import EmbedOptions, embed

    # The parser's destinations are EmbedOptions' fields, one for one.
    opts = EmbedOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedOptions)})
    with _progress("embed") as advance:
        result = embed(opts, progress=advance)
    skipped = f" ({result.skipped} did not decode)" if result.skipped else ""
    steady = result.steady_images_per_s
    after = f"; {steady:.1f} images/s once the first batch was out" if steady else ""
    print(
        f"embedded {result.images} images{skipped} at {result.image_size} px into "
        f"{result.dim}-d vectors in {result.seconds:.1f} s ({result.images_per_s:.1f} images/s "
        f"with the actors' start{after}): {result.out}"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Run or resume a Tune sweep, rank its trials without labels, export the winner."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.tune.options import SweepOptions

    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.tune.sweep import run_sweep

    opts = SweepOptions(
        space=args.space,
        config=args.config or str(default_config()),
        overrides=args.overrides,
        name=args.name,
        samples=args.samples,
        scheduler=args.scheduler,
        search=args.search,
        max_concurrent_trials=args.concurrent,
        grace_steps=args.grace_steps,
        reduction_factor=args.reduction_factor,
        seed=args.seed,
        select_by=args.select_by,
        plateau_tol=args.plateau_tol,
        validate_with_labels=args.validate_data if args.validate_with_labels else None,
        val_data=args.val_data,
        export_winner=not args.no_export,
    )
    result = run_sweep(opts)
    if result.interrupted:
        return 130
    minutes, seconds = divmod(round(result.seconds), 60)
    print(
        f"\nsweep {'resumed and ' if result.resumed else ''}finished in {minutes} min "
        f"{seconds} s: {len(result.rows)} trials"
    )
    print(f"results: {result.sweep_dir}/results.csv, plot: {result.sweep_dir}/plot.png")
    if result.validation and "rho" in result.validation and result.validation["rho"]:
        print(
            f"validation: {result.sweep_dir}/validation.json, scatter plots: "
            f"{result.sweep_dir}/validation_<metric>.png"
        )
    print(f"TensorBoard of every trial: tensorboard --logdir {result.sweep_dir}/runs")
    return 0


def _add_sweep_command(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="Ray Tune sweep of the pretrain config, ranked by the label-free score",
        description="Run one pretraining per trial (a TorchTrainer per Tune trial), rank the "
        "trials without labels (--select-by: selection_score = loss / λ^α smoothed over the "
        "last steps, lower is better, or RankMe of held-out embeddings, higher is better), "
        "flag trials whose loss is still falling, write results.csv and plot.png, and "
        "export the winner's backbone. Rerunning with the same --name resumes an "
        "interrupted sweep.",
    )
    sweep.add_argument("--space", required=True, help="search space YAML (tune_spaces/)")
    sweep.add_argument(
        "--config",
        default=None,
        help="pretrain config every trial starts from (default: the packaged CPU quickstart, "
        "lejepa_ray/configs/quickstart.yaml)",
    )
    sweep.add_argument(
        "--name",
        default=None,
        help="sweep directory under storage_path (default: "
        "sweep-<space>-<timestamp>); the same name resumes",
    )
    sweep.add_argument(
        "--samples",
        type=int,
        default=4,
        help="trials drawn from the space, times its grid combinations (default: 4)",
    )
    sweep.add_argument("--scheduler", choices=("asha", "fifo"), default="asha")
    sweep.add_argument(
        "--search",
        choices=("random", "optuna"),
        default="random",
        help="random, or optuna's TPE (pip install 'lejepa-ray[optuna]')",
    )
    sweep.add_argument(
        "--concurrent",
        type=int,
        default=1,
        help="trials at once (default: 1); each takes its config's workers",
    )
    sweep.add_argument(
        "--grace-steps",
        type=int,
        default=None,
        help="ASHA's first rung in steps (default: a quarter of optim.steps)",
    )
    sweep.add_argument(
        "--reduction-factor",
        type=int,
        default=2,
        help="ASHA keeps the best 1/N at each rung (default: 2)",
    )
    sweep.add_argument("--seed", type=int, default=0, help="seed of the search (default: 0)")
    sweep.add_argument(
        "--select-by",
        choices=("rankme", "score"),
        default="rankme",
        help="what ranks the trials and picks the winner: rankme (RankMe of held-out "
        "backbone features, higher is better; default) or score (loss / λ^α, lower is "
        "better); ASHA stops trials by the score either way",
    )
    sweep.add_argument(
        "--plateau-tol",
        type=float,
        default=0.05,
        help="flag a trial as still descending when its mean loss over the last "
        "loss.score_smoothing_steps steps is more than this fraction below the window "
        "before (default: 0.05)",
    )
    sweep.add_argument(
        "--validate-with-labels",
        action="store_true",
        help="probe every trial's last checkpoint (kNN and linear; early-stopped trials "
        "too) and report Spearman ρ, with bootstrap 95%% intervals, of every label-free "
        "metric against probe accuracy",
    )
    sweep.add_argument(
        "--validate-data",
        default="digits",
        help="labelled data the probes are fitted on (default: digits)",
    )
    sweep.add_argument(
        "--val-data",
        default=None,
        help="labelled data the probes are scored on, e.g. digits:val or a val/ folder "
        "(default: a hash 80/20 split of --validate-data)",
    )
    sweep.add_argument(
        "--no-export", action="store_true", help="do not export the winner's backbone"
    )
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides for every trial, e.g. optim.steps=60 "
        "storage_path=s3://bucket/sweeps",
    )
    sweep.set_defaults(func=_sweep)


def _add_pretrain_command(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser(
        "pretrain",
        help="LeJEPA pretraining of a timm backbone on Ray Train",
        description="Pretrain with LeJEPA. With no arguments: the CPU quickstart (digits, a "
        "small backbone, a few minutes, then probes on held-out images beside random init "
        "and raw pixels) on a local Ray instance; inside "
        "`ray job submit` or with RAY_ADDRESS set, on that cluster.",
    )
    pretrain.add_argument(
        "--config",
        default=None,
        help="YAML config (default: the packaged CPU quickstart, "
        "lejepa_ray/configs/quickstart.yaml)",
    )
    pretrain.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own logs too (the same as logging.verbose=true)",
    )
    pretrain.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. model.name=vit_small_patch16_224 "
        "loss.lam=0.02 scaling.num_workers=8",
    )
    pretrain.set_defaults(func=_pretrain)

    exporter = commands.add_parser(
        "export",
        help="a checkpoint's backbone as a timm model (model.safetensors + config.json)",
        description="Consolidate a checkpoint (DDP or FSDP shards, any world size) and write "
        "its backbone in timm's hub layout, loadable with "
        "timm.create_model('local-dir:OUT_DIR', pretrained=True, num_classes=0), its "
        "pretrained_cfg describing the run's input size and normalization; the projector goes to "
        "projector.safetensors beside it.",
    )
    exporter.add_argument(
        "source",
        metavar="RUN_OR_CHECKPOINT",
        help="a run directory (its latest checkpoint) or a checkpoint directory; a local "
        "path or a URI (s3://...), read in place",
    )
    exporter.add_argument(
        "out_dir", metavar="OUT_DIR", help="output folder, a local path or a URI (s3://...)"
    )
    exporter.add_argument(
        "--format",
        choices=("timm", "onnx"),
        default="timm",
        help="timm's hub layout (default), or that plus model.onnx, checked against PyTorch "
        "with onnxruntime (pip install 'lejepa-ray[onnx]')",
    )
    exporter.set_defaults(func=_export)

    evaluator = commands.add_parser(
        "eval",
        help="kNN and linear probes of a checkpoint's or export's frozen features",
        description="Embed labelled images with the frozen backbone (or, with --features "
        "projector, a checkpoint's projector outputs), fit the "
        "probes on --data and score them on --val-data (without it: on a hash 80/20 split of "
        "--data), and report kNN (cosine, temperature-weighted votes) and linear (logistic "
        "regression) top-1 accuracy; the last line is JSON.",
    )
    evaluator.add_argument(
        "source",
        metavar="CHECKPOINT_OR_EXPORT",
        help="a run or checkpoint directory, or an `export` folder",
    )
    evaluator.add_argument(
        "--data",
        required=True,
        help="labelled data the probes are fitted on: digits, synthetic, an "
        "image folder (labels from subfolders) or parquet shards; a :train, "
        ":val or :all suffix picks that data.split (digits:train)",
    )
    evaluator.add_argument(
        "--val-data",
        default=None,
        help="labelled data the probes are scored on (e.g. the val/ folder "
        "beside train/, or digits:val); default: a hash 80/20 split of --data",
    )
    evaluator.add_argument(
        "--baseline",
        action="store_true",
        help="also report the probes on raw pixels of the same split",
    )
    evaluator.add_argument("--probe", choices=("linear", "knn", "both"), default="both")
    evaluator.add_argument(
        "--features",
        choices=("backbone", "projector"),
        default="backbone",
        help="what to probe: the backbone's pooled features (default, what export keeps) or "
        "a checkpoint's projector outputs",
    )
    evaluator.add_argument(
        "--size",
        type=int,
        default=None,
        help="image side in px (default: the size it was trained at)",
    )
    evaluator.add_argument("--max-samples", type=int, default=5000)
    evaluator.add_argument("--k", type=int, default=20, help="kNN neighbours (default: 20)")
    evaluator.add_argument(
        "--temperature", type=float, default=0.07, help="kNN vote temperature (default: 0.07)"
    )
    evaluator.set_defaults(func=_eval)


def _add_embed_command(commands: argparse._SubParsersAction) -> None:
    embedder = commands.add_parser(
        "embed",
        help="a frozen backbone's features of every image, as parquet (Ray Data batch inference)",
        description="Embed every image of --data with the frozen backbone of a run, checkpoint "
        "or export (an actor pool of --workers backbones, on CPUs or GPUs), resized and "
        "centre-cropped as eval does, and write parquet files of key, label and embedding (a "
        "fixed-size list of float32) to --out, which appears only once complete.",
    )
    embedder.add_argument(
        "source",
        metavar="RUN_CHECKPOINT_OR_EXPORT",
        help="a run or checkpoint directory, or an `export` folder",
    )
    embedder.add_argument(
        "--data",
        required=True,
        help="digits, synthetic, an image folder or parquet shards (local or s3://); a "
        ":train, :val or :all suffix picks that split",
    )
    embedder.add_argument(
        "--out", required=True, help="new output folder, a local path or a URI (s3://...)"
    )
    embedder.add_argument(
        "--size", type=int, default=None, help="image side in px (default: the trained size)"
    )
    embedder.add_argument(
        "--batch-size", type=int, default=64, help="images per batch and file (default: 64)"
    )
    embedder.add_argument(
        "--workers",
        type=int,
        default=None,
        help="actors holding the backbone (default: one per GPU with --use-gpu, else half the "
        "CPUs; the other half read and decode)",
    )
    embedder.add_argument("--use-gpu", action="store_true", help="one GPU per actor")
    embedder.add_argument(
        "--features",
        choices=("backbone", "projector"),
        default="backbone",
        help="the backbone's pooled features (default) or a checkpoint's projector outputs",
    )
    embedder.set_defaults(func=_embed)


def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    # lazy: data.decode brings numpy and PIL (~0.2 s): paid when a parser is built, not on
    # importing cli.
    from lejepa_ray.data.decode import DEFAULT_MAX_PIXELS

    data = commands.add_parser("data", help="convert image folders; benchmark the data stream")
    sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    convert = sub.add_parser(
        "convert",
        help="image folder -> parquet shards (decode-checked, resumable)",
        description="Convert an image folder (labels from first-level subfolders) to parquet "
        "shards of encoded images. Rerunning resumes an interrupted conversion.",
    )
    convert.add_argument("src", help="image folder: a local path or a URI (s3://, gs://)")
    convert.add_argument(
        "dst", help="output folder for the shards and dataset.json: a local path or a URI"
    )
    convert.add_argument(
        "--shard-size-mb", type=float, default=256.0, help="target shard size in MiB (default: 256)"
    )
    convert.add_argument("--workers", type=int, default=1, help="parallel processes (default: 1)")
    convert.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="skip larger images as decompression bombs (default: %(default)s)",
    )
    convert.set_defaults(func=_data_convert)

    bench = sub.add_parser(
        "bench",
        help="views/s of Ray Data against a DataLoader with the same workers",
        description="Measure multi-view samples/s of the Ray Data stream and of a "
        "torch DataLoader making the same views with the same number of CPU workers. "
        "Prints a profile, the ratio and, last, one JSON line.",
    )
    bench.add_argument(
        "--data", default="synthetic", help="synthetic, digits, an image folder or parquet shards"
    )
    bench.add_argument(
        "--seconds", type=float, default=30.0, help="measuring time per pipeline (default: 30)"
    )
    bench.add_argument(
        "--workers", type=int, default=None, help="CPU workers on each side (default: all cores)"
    )
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument(
        "--tasks-per-cpu",
        type=int,
        default=None,
        help="Ray Data transform tasks in flight per CPU worker (data.tasks_per_cpu; default: "
        "the data config's)",
    )
    bench.add_argument(
        "--task-units",
        type=int,
        default=None,
        help="units of data.transform_batch_size samples each Ray Data views task makes "
        "(data.task_units; default: the data config's)",
    )
    bench.add_argument(
        "--augment-on",
        choices=("cpu", "device"),
        default="cpu",
        help="where the photometric ops run (data.augment_on); with device, both sides make "
        "crops and parameters only (default: cpu)",
    )
    bench.add_argument(
        "--kernels",
        choices=("fast", "pil"),
        default="fast",
        help="what computes the views' pixels (data.views.kernels; default: fast)",
    )
    bench.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="synthetic count, or a cap on the other sources",
    )
    bench.add_argument(
        "--image-size", type=int, default=256, help="side of synthetic/digits images (default: 256)"
    )
    bench.add_argument("--global-views", type=int, default=2)
    bench.add_argument("--global-size", type=int, default=224)
    bench.add_argument("--local-views", type=int, default=8)
    bench.add_argument("--local-size", type=int, default=96)
    bench.set_defaults(func=_data_bench)


def _cluster_check(args: argparse.Namespace) -> int:
    """Check offline that a config's training workers fit a cluster launcher YAML."""
    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.cluster import check_fits, load_cluster

    # lazy: each subcommand imports its own needs; --help and argument errors stay fast.
    from lejepa_ray.config import load_config

    cfg = load_config(args.config, args.overrides)
    fit = check_fits(cfg, load_cluster(args.cluster), args.concurrent)
    print(f"{args.config or 'defaults'} on {args.cluster}: {fit.describe()}")
    return 0


def _add_cluster_check_command(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser(
        "cluster-check",
        help="check offline that a config's workers fit a cluster.yaml",
        description="Check, without any cloud call, that the training workers a config asks "
        "for (scaling.num_workers, one GPU each with scaling.use_gpu, scaling.cpus_per_worker "
        "CPUs and scaling.resources), times --concurrent sweep trials, fit the node types a "
        "Ray cluster launcher YAML declares. An elastic range [min, max] needs room for min "
        "and is told how far it can grow.",
    )
    check.add_argument(
        "--cluster", default="cluster.yaml", help="cluster launcher YAML (default: cluster.yaml)"
    )
    check.add_argument("--config", default=None, help="pretrain config YAML")
    check.add_argument(
        "--concurrent", type=int, default=1, help="runs at once (a sweep's --concurrent; default 1)"
    )
    check.add_argument("overrides", nargs="*", metavar="key=value")
    check.set_defaults(func=_cluster_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lejepa-ray",
        description="Ray-distributed LeJEPA self-supervised pretraining for timm backbones.",
    )
    parser.add_argument("--version", action="version", version=f"lejepa-ray {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = commands.add_parser("env", help="print package versions and visible accelerators")
    env.set_defaults(func=_env)
    _add_data_commands(commands)
    _add_pretrain_command(commands)
    _add_embed_command(commands)
    _add_sweep_command(commands)
    _add_cluster_check_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except TrainingStopped as e:
        print(f"lejepa-ray: training stopped: {e}", file=sys.stderr)
        return 1
    except LejepaRayError as e:
        # Configuration and input problems: the message says what to do, a traceback would
        # not. Anything else is a bug and keeps its traceback.
        print(f"lejepa-ray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
