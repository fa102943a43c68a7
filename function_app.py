"""The Azure Functions app: a composition root that only registers the blueprints.

Nothing here reads settings or builds clients: the blueprints load the pipelines catalog and
open the Service Bus sender on first use, in the worker process that needs them. Keys are the
Functions host's own: ``x-functions-key`` header or ``code`` query (``AuthLevel.FUNCTION``).
See docs/azure.md for settings, provisioning and deployment.
"""

import azure.durable_functions as df
import azure.functions as func

from orchestrations import delivery, http_api, responses, scoring, split_entity

app = df.DFApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (http_api.bp, scoring.bp, responses.bp, delivery.bp, split_entity.bp):
    app.register_functions(blueprint)
