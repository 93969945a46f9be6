"""``python -m lejepa_ray.cli``: the ``lejepa-ray`` command, without its console script."""

import sys

from lejepa_ray.cli import main

sys.exit(main())
