"""wtext: multi-mask weight-tied vision models and their deep-equilibrium baseline."""

__version__ = "0.1.0"
