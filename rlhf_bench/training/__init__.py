"""Mechanics shared by several methods, one layer below them: group sampling, best-of-k, the pair loop."""
