"""Issue 21 (fidelity): no degenerate or unfair number in the headline, labels that match what
features do, interactions measured as a set. One test (or more) per item."""

from __future__ import annotations

import json

from clt_bench.compare.stage import transcoder_table
from clt_bench.config import load_config
from clt_bench.features.scores import LABELS
from clt_bench.features.stage import label_counts


def test_every_label_count_of_features_reaches_compares_table(tmp_path):
    """The features stage's label counts (``n_single_yy`` ...) are the keys compare reads."""
    cfg = load_config("quick")
    rows = [{"label": lab} for lab in LABELS]
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "stage.json").write_text(json.dumps({"summary": label_counts(rows)}))
    side = transcoder_table(cfg, tmp_path, {"clt": []}, [], {})
    measures = {r["measure"]: r for r in side}
    for lab in LABELS:
        assert f"labels: {lab}" in measures, lab
        assert measures[f"labels: {lab}"]["clt"] == 1, lab
