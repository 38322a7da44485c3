"""The study runner's pure parts: its diversity metric, its gap table and its row overrides."""

import math

import numpy as np
import pandas as pd
import pytest

from didi import config, study


def test_positional_entropy_sees_collapse_that_unigram_entropy_does_not():
    one_sequence = np.tile(np.arange(6), (50, 1))  # every sample the same sequence of 6 distinct tokens
    assert study.positional_entropy(one_sequence) == 0.0
    four_way = np.repeat(np.arange(4), 25)[:, None].repeat(3, axis=1)  # each position: 4 tokens, 25 each
    assert study.positional_entropy(four_way) == pytest.approx(math.log(4))


def test_gap_table_by_hand():
    rows = []
    for k, teacher, student in ((4, 2.0, 1.5), (8, 1.6, 1.5), (32, 1.2, 1.1)):
        rows.append({"name": "teacher", "seed": 0, "model": "teacher", "K": k, "nll": teacher, "entropy": 2.0,
                     "positional_entropy": 3.0})
        for seed, shift in ((0, 0.0), (1, 0.2)):
            rows.append({"name": "row", "seed": seed, "model": "ema", "K": k, "nll": student + shift,
                         "entropy": 1.9, "positional_entropy": 2.9})
    table = study.gap_table(pd.DataFrame(rows), [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "nll@4"] == pytest.approx(1.6)  # mean over the two seeds
    assert table.loc["row", "spread@4"] == pytest.approx(0.2)
    assert table.loc["row", "closed@4"] == pytest.approx((2.0 - 1.6) / (2.0 - 1.2))
    assert table.loc["row", "closed@8"] == pytest.approx((1.6 - 1.6) / (1.6 - 1.2))
    assert table.loc["teacher", "closed@4"] == 0.0 and "closed@32" not in table.columns
    assert table.loc["row", "entropy@8"] == pytest.approx(1.9) and table.loc["teacher", "entropy@32"] == 2.0
    assert "denoiser_closed@4" not in table.columns  # no exact denoiser scored
    exact = [{"name": "exact_denoiser", "seed": 0, "model": "exact", "K": k, "nll": nll, "entropy": 2.0,
              "positional_entropy": 3.0} for k, nll in ((4, 1.8), (8, 1.4), (32, 1.0))]
    table = study.gap_table(pd.DataFrame(rows + exact), [4, 8, 32], seq_len=32).set_index("row")
    assert table.loc["row", "denoiser_closed@4"] == pytest.approx((2.0 - 1.6) / (2.0 - 1.8))
    assert table.loc["row", "denoiser_closed@32"] == pytest.approx((1.2 - 1.2) / (1.2 - 1.0))
    assert table.loc["exact_denoiser", "denoiser_closed@8"] == pytest.approx(1.0)


def test_row_overrides_merge_and_unknown_keys_are_named():
    cfg = config.load()
    distill_cfg, method = study.row_config(cfg, {"student_lr": 1e-5, "method": {"tau_per_group": True}})
    assert distill_cfg["student_lr"] == 1e-5 and method["tau_per_group"] is True
    assert method["positives"] == cfg["distill"]["method"]["positives"]
    with pytest.raises(config.ConfigError, match="studnet_lr"):
        study.row_config(cfg, {"studnet_lr": 1e-5})
    with pytest.raises(config.ConfigError, match="tau_per_gruop"):
        study.row_config(cfg, {"method": {"tau_per_gruop": True}})
