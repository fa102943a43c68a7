"""nearline: queue-driven near-real-time ML scoring.

Applications submit scoring requests over HTTP and get ``202 Accepted`` plus a status URL;
workers pull requests off a queue in batches, run a multi-model pipeline and publish results.
"""

__version__ = "0.1.0"
