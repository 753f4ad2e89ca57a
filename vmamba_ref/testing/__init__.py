"""Tools to test any implementation of VMamba's scan operators against the reference."""

from vmamba_ref.testing.tolerances import TOLERANCES, Tolerance, tolerance

__all__ = ["TOLERANCES", "Tolerance", "tolerance"]
