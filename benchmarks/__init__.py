"""Benchmarks: counts, not timed assertions. Run from the repository root: python -m benchmarks.bench_submit."""
