"""tasks/evaluate.py: the evaluation table as the Prefect UI's table artifact."""

import math

import pandas as pd

from tasks.evaluate import artifact_rows


def test_the_artifact_leaves_out_what_did_not_score_and_keeps_plain_values():
    nan = float("nan")
    base = {"step": [5, 10], "checkpoint": ["a.pt", "b.pt"], "generator": ["ema", "ema"], "num_samples": [200, 200],
            "best": [False, True], "inception_fid": [nan, nan], "ssl_fd": [9.51234, 4.25], "seconds": [1.0, 2.0]}
    unlabelled = pd.DataFrame({**base, "fd": [nan, nan], "is_mean": [nan, nan], "classes_present": [0, 0],
                               "rarest_class_fraction": [nan, nan]})
    rows = artifact_rows(unlabelled)
    assert list(rows[0]) == ["step", "checkpoint", "generator", "ssl_fd", "num_samples", "best"]
    assert rows[0]["ssl_fd"] == 9.5123
    assert not any(isinstance(v, float) and math.isnan(v) for r in rows for v in r.values())
    labelled = unlabelled.assign(fd=[30.0, 20.0], is_mean=[8.0, 9.0], classes_present=[9, 10],
                                 rarest_class_fraction=[0.01, 0.05])
    assert list(artifact_rows(labelled)[1]) == ["step", "checkpoint", "generator", "fd", "is_mean", "classes_present",
                                                "rarest_class_fraction", "ssl_fd", "num_samples", "best"]
