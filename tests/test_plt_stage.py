"""The plt stage: a sub-run with the [plt] section as its transcoder, sharing the run's data."""

from __future__ import annotations

import pytest

from clt_bench.config import load_config
from clt_bench.errors import UserError
from clt_bench.plt import stage as plt_stage


def test_plt_section_becomes_the_sub_run_transcoder():
    cfg = load_config("toy", ["plt.n_features=64", "plt.lambda_s=0.01"])
    sub = plt_stage.plt_config(cfg)
    assert (sub.clt.kind, sub.clt.n_features, sub.clt.lambda_s) == ("plt", 64, 0.01)
    assert cfg.clt.kind == "clt" and cfg.clt.n_features == 512  # the run's own CLT untouched
    assert sub.section_hash("clt") != cfg.section_hash("clt")
    with pytest.raises(UserError, match="plt.kind"):
        plt_stage.plt_config(load_config("toy", ['plt.kind="clt"']))
