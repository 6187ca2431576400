"""Reward-model variants, the simulated annotator and preference data."""
