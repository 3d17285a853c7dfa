"""Feature scoring (the features stage, ``stage``): the top-K transcoder features by influence on
the task (``task_attributions``), their YY x ZZ heatmaps, shape scores and labels
(``shape_scores``), ablations (``ablation``), interactions, corpus contexts and tables."""
