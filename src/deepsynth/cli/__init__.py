"""Command-line interface (``deepsynth``)."""
