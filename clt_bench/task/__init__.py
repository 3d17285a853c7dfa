"""The greater-than task: spec (data in tasks/), datasets, metrics and the task stage."""
