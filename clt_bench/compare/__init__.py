"""CLT features vs the baseline circuit: overlap, influence share, units-needed curves, tables.

- ``overlap``: node precision/recall at layer x position granularity, influence inside the circuit
- ``curve``: PD recovered with the top-k CLT features (the rest corrupted)
- ``stage``: the pipeline stage (compare/ tables, PNG, metrics.json)
"""
