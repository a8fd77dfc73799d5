"""The plain-text probe summary shows each task's headline metrics (not only the JSON)."""

from __future__ import annotations

from contrastmix.cli import _probe_lines


def test_regression_summary_has_groups_and_spearman() -> None:
    res = {"task": "regression", "penalty": 0.01, "mae": 5.5, "mse": 81.0, "gmean": 2.7,
           "n_train": 10, "n_test": 5, "spearman": 0.82,
           "groups": {"many": {"mae": 1.0, "mse": 2.0, "gmean": 0.5, "n": 2},
                      "few": {"mae": 9.0, "mse": 90.0, "gmean": 7.0, "n": 3}}}
    text = "\n".join(_probe_lines(res))
    assert "MAE: 5.5000" in text and "few-shot: MAE 9.0000" in text and "(n=3)" in text
    assert "Spearman" in text and "0.8200" in text


def test_multimodal_summaries() -> None:
    clip = {"task": "multimodal", "n_test": 9, "i2t_recall@1": 0.5, "i2t_recall@5": 0.9,
            "t2i_recall@1": 0.4, "t2i_recall@5": 0.8, "zero_shot_accuracy": 0.7,
            "zero_shot_ece": 0.05, "alignment": 0.4, "uniformity_image": -2.0,
            "uniformity_text": -1.5, "uniformity_union": -2.1, "modality_gap": 0.3}
    text = "\n".join(_probe_lines(clip))  # a result of an older release: the former names
    assert "(class-level) hit rate image->text @1 0.5000 @5 0.9000" in text
    assert "text->image @1 0.4000 @5 0.8000" in text and "zero-shot accuracy: 0.7000" in text
    assert "modality gap 0.3000" in text
    pairs = {"task": "multimodal", "n_test": 9, "i2t_map": 0.5, "t2i_map": 0.5,
             "protocol": {"retrieval_k": [1, 5, 10], "retrieval_relevance": "instance"},
             **{f"{d}_hit_rate@{k}": k / 10 for d in ("i2t", "t2i") for k in (1, 5, 10)},
             "alignment": 0.4, "uniformity_image": -2.0, "uniformity_text": -1.5,
             "uniformity_union": -2.1, "modality_gap": 0.3}
    text = "\n".join(_probe_lines(pairs))
    assert "(instance-level) hit rate image->text @1 0.1000 @5 0.5000 @10 1.0000" in text
    assert "zero-shot accuracy and ECE: not measured (the data has no labels)" in text
    m3 = {"task": "multimodal", "n_test": 9, "fusion_accuracy": 0.9, "fusion_ece": 0.03,
          "unimodal_accuracy": {"image": 0.8, "text": 0.4}}
    text = "\n".join(_probe_lines(m3))
    assert "fusion-head accuracy: 0.9000" in text and "text 0.4000" in text


def test_classification_summary_with_knn() -> None:
    res = {"task": "classification", "accuracy": 0.87, "penalty": 0.01, "ece": 0.07,
           "n_train": 4000, "n_test": 1000, "knn_accuracy": 0.75,
           "knn": {"k": 200, "temperature": 0.1}}
    lines = _probe_lines(res)
    assert lines[0].startswith("linear probe accuracy: 0.8700") and "ECE 0.0700" in lines[0]
    assert lines[1] == "kNN accuracy (k=200, tau=0.1): 0.7500"
