# %% [markdown]
# # clt-bench quickstart
#
# Does a cross-layer transcoder (CLT) find the greater-than circuit? This walk-through trains
# nothing: it reads a finished run (`results/toy`, written by `clt-bench run`) or, when there is
# none, runs the `quick` preset (the shipped toy model, every stage at smoke-test size, ~20 s on
# one CPU core). It shows an attribution graph, a feature's YY x ZZ heatmap and the headline table.
# Open it as a notebook (VS Code / Jupytext read the `# %%` cells) or run it:
# `python examples/quickstart.py`. Definitions of every number: `docs/methods.md`.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from clt_bench import (
    build_graph,
    load_clt,
    load_config,
    load_model,
    load_task_batch,
    read_metrics,
    run_pipeline,
    score_features,
)
from clt_bench.graphs import draw_graph

RUN = Path(os.environ.get("CLT_BENCH_RUN", "results/toy"))
OUT = Path(os.environ.get("CLT_BENCH_OUT", "results/quickstart"))
OUT.mkdir(parents=True, exist_ok=True)
if not (RUN / "metrics.json").is_file():
    RUN = Path("results/quick")
    run_pipeline(load_config("quick"), RUN)  # resumes: instant once it has run
cfg = load_config(str(RUN))  # the exact config the run used (its config.json)
model = load_model(cfg.model.name)
clt = load_clt(RUN / "clt")
print(f"run {RUN}: model {cfg.model.name}, CLT {clt.n_layers} layers x {clt.spec.n_features}")

# %% [markdown]
# ## An attribution graph
# The local replacement model of one prompt (attention and LayerNorm frozen, one error node per
# layer and position), attributed to the greater-than logit difference and pruned by influence.

# %%
graph = build_graph(model, clt, "The war lasted from the year 1732 to the year 17", config=cfg)
print({k: round(v, 3) for k, v in graph.scores.items()})
for f in graph.top_features(5):
    print(f)
draw_graph(graph, OUT / "graph.png", title="greater-than, YY = 32")
plt.show()

# %% [markdown]
# ## Feature heatmaps
# The top features by influence on the task, each scored on its YY x ZZ logit-attribution map
# (rows: start year YY, columns: answer ZZ; a greater-than comparator is positive right of the
# diagonal).

# %%
batch = load_task_batch(cfg, model)
scores = score_features(model, clt, batch, top_k=8, n_prompts=16, config=cfg)
print(scores.table[["rank", "feature", "label", "influence", "gt_corr"]].to_string(index=False))
fig, ax = plt.subplots(figsize=(6, 5))
heat = pd.DataFrame(scores.heatmaps[0], index=scores.yy_values, columns=range(100))
sns.heatmap(heat, center=0, cmap="RdBu_r", ax=ax, xticklabels=10, yticklabels=8)
ax.set(xlabel="ZZ", ylabel="YY", title=f"feature {scores.table.feature[0]}")
fig.savefig(OUT / "feature_heatmap.png", dpi=80, bbox_inches="tight")
plt.show()

# %% [markdown]
# ## The headline table
# Every headline number of the run beside the published value where the definitions match
# (`definition`: the anchor in `docs/methods.md`).

# %%
metrics = read_metrics(RUN)
headline = metrics[metrics.published.notna()][["metric", "value", "published", "source"]]
print(headline.to_string(index=False))
metrics.to_csv(OUT / "metrics.csv", index=False)
