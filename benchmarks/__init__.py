"""Benchmarks: each module prints one JSON line of figures beside its raw limit and its peer."""
