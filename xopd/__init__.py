"""xopd: measure and close the reasoning gap between speech LLMs and their text LLMs (X-OPD)."""

__version__ = "0.1.0"
