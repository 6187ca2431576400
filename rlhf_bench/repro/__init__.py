"""Reproductions of published results: a registry of claims (``results/published/*.yaml``), the
runs that check them, and their verdicts (``rlhf-bench-repro``)."""
