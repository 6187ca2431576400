"""rlhf-bench: an experiment-tracking and benchmarking harness for RLHF methods."""

__version__ = "0.1.0"
