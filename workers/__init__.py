"""The worker program, ``python -m workers --broker URL``; the worker itself is :mod:`nearline.worker`."""
