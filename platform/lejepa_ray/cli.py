"""`lejepa-ray` command line. Subcommands parse arguments and call into the package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

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
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(cuda)) or "none"
    print(f"{'cuda devices':12s} {cuda} ({names})")
    print(f"{'cpu threads':12s} {torch.get_num_threads()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lejepa_ray import __version__

    parser = argparse.ArgumentParser(
        prog="lejepa-ray",
        description="Ray-distributed LeJEPA self-supervised pretraining for timm backbones.",
    )
    parser.add_argument("--version", action="version", version=f"lejepa-ray {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = commands.add_parser("env", help="print package versions and visible accelerators")
    env.set_defaults(func=_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
