"""`ray job submit ... -- python jobs/pretrain.py [--config FILE] [--KEY VALUE ...]`.

The same entry point as `lejepa-ray pretrain`: inside a Ray job it joins that cluster,
elsewhere it starts a local Ray instance.
"""

import sys
from pathlib import Path

# The code submitted with the job (its working directory's platform/) comes before the version
# installed on the nodes; lejepa_ray.launch.runtime.connect then ships it to every worker.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from lejepa_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
