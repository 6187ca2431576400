"""Embedded tasks: data generated or shipped by the package, and a gold reward computed by code."""
