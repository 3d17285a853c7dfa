"""Feature scoring: the top-K CLT features by influence on the greater-than target, each with its
YY x ZZ logit-attribution heatmap, shape scores, ablation effects, contexts and a label.

- ``attribution``: per-(prompt, feature) attributions (answer logits, logit diff, first-order PD)
- ``scores``: heatmap shape scores, activation profile over YY, the label rule
- ``ablation``: Delta PD when a feature is zeroed (constrained, frozen attention) or removed (free)
- ``contexts``: top activating corpus snippets
- ``stage``: the pipeline stage (features.csv / features.md / PNGs / metrics.json)
"""
