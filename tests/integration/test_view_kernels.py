"""lejepa_ray.data.view_kernels (``data.views.kernels=fast``) against the PIL reference
(``views.render``, itself byte-equal to torchvision's pipeline): op by op for fixed parameters,
whole views for the same seeded draws, determinism, and that the Ray-free modules that import
``views`` do not need OpenCV.

The one-process tests are in ``tests/unit/test_view_kernels.py``."""

from __future__ import annotations

import subprocess
import sys


def test_views_and_device_views_import_without_opencv():
    # The GPU machine has no OpenCV: the Ray-free modules must not need it at import, and the
    # reference kernels must work without it.
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "from lejepa_ray.data import device_views, views\n"
        "from lejepa_ray.data.config import ViewConfig\n"
        "from PIL import Image\n"
        "m = views.ViewMaker(ViewConfig(global_size=16, local_views=0, kernels='pil'))\n"
        "print(m.views_of(Image.new('RGB', (20, 20)), 'k', 0)[0].shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 3, 16, 16)"
