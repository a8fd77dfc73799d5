"""Evaluation of frozen representations (docs/methods.md §5, §8, §9).

* :mod:`contrastmix.eval.probe` — feature extraction with the backbone frozen in eval mode,
  linear probe (logistic regression by L-BFGS / ridge) with validation-selected penalty and refit.
* :mod:`contrastmix.eval.knn` — weighted kNN classifier (InstDisc / MoCo monitor), torch or faiss.
* :mod:`contrastmix.eval.geometry` — alignment, uniformity, effective rank (RankMe), modality gap.
* :mod:`contrastmix.eval.collapse` — neural-collapse metrics NC1-NC4 and mixup geometry.
* :mod:`contrastmix.eval.calibration` — ECE, reliability diagrams, temperature scaling.
"""

from contrastmix.eval.calibration import (
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    reliability_diagram,
    to_probabilities,
)
from contrastmix.eval.collapse import (
    mixed_pair_features,
    mixup_geometry,
    neural_collapse,
    plot_mixup_projection,
    three_class_projection,
)
from contrastmix.eval.geometry import (
    alignment,
    effective_rank,
    modality_gap,
    multimodal_geometry,
    uniformity,
)
from contrastmix.eval.knn import knn_accuracy, knn_predict, knn_scores
from contrastmix.eval.probe import (
    LADFit,
    LogisticFit,
    extract_features,
    fit_lad,
    fit_logistic,
    fit_ridge,
    linear_probe,
    shot_groups,
)

__all__ = [
    "LADFit",
    "LogisticFit",
    "alignment",
    "effective_rank",
    "expected_calibration_error",
    "extract_features",
    "fit_lad",
    "fit_logistic",
    "fit_ridge",
    "fit_temperature",
    "knn_accuracy",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "mixed_pair_features",
    "mixup_geometry",
    "modality_gap",
    "multimodal_geometry",
    "neural_collapse",
    "plot_mixup_projection",
    "plot_reliability",
    "reliability_diagram",
    "shot_groups",
    "three_class_projection",
    "to_probabilities",
    "uniformity",
]
