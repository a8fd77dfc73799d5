"""The core never imports Lightning (only contrastmix.train does)."""

from __future__ import annotations

import subprocess
import sys


def test_core_does_not_import_lightning() -> None:
    code = (
        "import sys\n"
        "import contrastmix.losses, contrastmix.mixing, contrastmix.banks, contrastmix.models\n"
        "import contrastmix.data, contrastmix.config, contrastmix.runs, contrastmix.eval.probe, contrastmix.eval.knn\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
