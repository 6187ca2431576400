"""Tables built from run records."""
