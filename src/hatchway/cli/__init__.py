"""The ``hatchway`` command line. Thin: parses flags and calls ``agent/`` or ``edge/``; holds no logic."""
