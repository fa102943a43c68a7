"""The HTTP contract (docs/api.md), framework-neutral: routes, handlers and the OpenAPI document.

:mod:`nearline.http.handlers` answers every route of the contract over the job seam
(:class:`nearline.service.Jobs`) with a plain :class:`~nearline.http.handlers.Response`; the
Starlette app (:mod:`nearline.api`) and the Azure Functions routes (``orchestrations.http_api``)
are thin adapters that translate their framework's request and response to and from it.
Nothing here imports a web framework.
"""
