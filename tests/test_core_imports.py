"""The core never imports Lightning (only contrastmix.train and contrastmix.methods do), and
evaluation (``probe``, ``report``) never imports the training code."""

from __future__ import annotations

import subprocess
import sys

TRAINING = ("lightning", "pytorch_lightning", "lightning_fabric", "contrastmix.methods",
            "contrastmix.train")


def test_core_does_not_import_lightning() -> None:
    code = (
        "import sys\n"
        "import contrastmix.losses, contrastmix.mixing, contrastmix.banks, contrastmix.models\n"
        "import contrastmix.data, contrastmix.config, contrastmix.runs, contrastmix.rundir\n"
        "import contrastmix.cli, contrastmix.eval.probe, contrastmix.eval.knn\n"
        "import contrastmix.eval.report\n"
        f"training = {TRAINING!r}\n"
        "bad = [m for m in sys.modules\n"
        "       if any(m == t or m.startswith(t + '.') for t in training)]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
