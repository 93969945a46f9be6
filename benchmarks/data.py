"""Data-stream benchmark: Ray Data views/s against a DataLoader with the same CPU workers.

Same as ``lejepa-ray data bench``; prints a profile, the ratio and, last, one JSON line.

    .venv/bin/python benchmarks/data.py --data synthetic --seconds 30

``--make-folder DIR --count N`` first writes N photo-sized (500×375 JPEG) synthetic images to
an ImageNet-style folder, to benchmark the folder source or, after ``lejepa-ray data convert``,
parquet shards, without downloading a dataset.
"""

import argparse
import sys

from lejepa_ray.cli import main
from lejepa_ray.data.synthetic import write_image_folder

if __name__ == "__main__":
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--make-folder")
    pre.add_argument("--count", type=int, default=2000)
    known, rest = pre.parse_known_args()
    if known.make_folder:
        write_image_folder(known.make_folder, known.count)
        print(f"wrote {known.count} images to {known.make_folder}")
        if not rest:
            sys.exit(0)
    sys.exit(main(["data", "bench", *rest]))
