"""Machinery the entry points share: data, checkpoints, the run lifecycle, metrics."""
