"""Experiments over many runs: method comparisons and the paper reproduction."""
