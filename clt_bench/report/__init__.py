"""The report stage (HTML, summary.md, metrics.json) and the CI regression check."""
