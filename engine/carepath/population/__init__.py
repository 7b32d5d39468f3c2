"""Population runs: a synthetic Luohu-like cohort, streaming batch evaluation, and a summary report."""
