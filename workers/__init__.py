"""Scoring workers: ``python -m workers --broker URL``. They run without the Functions host."""
