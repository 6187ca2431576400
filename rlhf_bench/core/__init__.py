"""The common training core shared by every method: small, pure, shape-documented functions."""
