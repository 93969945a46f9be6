"""Data-stream benchmark: Ray Data views/s against a DataLoader with the same CPU workers.

Same as ``lejepa-ray data bench``; prints a profile, the ratio and, last, one JSON line.

    .venv/bin/python benchmarks/data.py --data synthetic --seconds 30
"""

import sys

from lejepa_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["data", "bench", *sys.argv[1:]]))
