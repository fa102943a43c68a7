"""Job lifecycles: the local one (``local.py``, no cloud) and the Azure Durable Functions one.

Importing this package imports nothing from ``azure.functions``; the Azure modules do, and only
``function_app.py`` imports them.
"""
