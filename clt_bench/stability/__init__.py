"""Stability of a run's findings across CLT seeds (``clt-bench run --clt-seeds 0,1,2``).

``seeds`` runs the pipeline once per CLT seed, sharing every stage that does not depend on the
CLT (task, baseline, activations); ``match`` pairs features across seeds by decoder direction;
``summary`` writes ``<run>/stability/``: which top features are stable, label counts over seeds,
headline metrics as mean +- sd, and heatmaps of the stable features side by side.
"""
