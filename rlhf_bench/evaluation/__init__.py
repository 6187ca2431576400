"""Evaluation of a policy: gold reward, proxy reward, KL to the reference, win rate."""
