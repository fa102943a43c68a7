"""Tracing's configuration: which exporters the standard ``OTEL_*`` variables name, and the
tracer provider made from them (docs/operations.md, Tracing).

Imported by :mod:`nearline.tracing` only once tracing is on; OpenTelemetry itself is imported
inside the functions here. ``APPLICATIONINSIGHTS_CONNECTION_STRING`` hands the provider to the
Azure Monitor distro, the optional extra ``nearline[azure-monitor]``: without it, one warning.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("nearline.tracing")

AZURE_VARIABLE = "APPLICATIONINSIGHTS_CONNECTION_STRING"
OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
AZURE_MISSING = (
    f"{AZURE_VARIABLE} is set but azure-monitor-opentelemetry is not installed "
    "(pip install 'nearline[azure-monitor]'): no traces go to Application Insights"
)


def exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``environ`` asks for: ``OTEL_TRACES_EXPORTER``, else ``otlp`` if an OTLP
    endpoint is set; none when ``OTEL_SDK_DISABLED`` is true."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not named and any(environ.get(v, "").strip() for v in OTLP_VARIABLES):
        named = ["otlp"]
    return [n for n in named if n != "none"]


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns tracing on (an exporter, or the Azure connection string)."""
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return bool(exporters(environ)) or (not disabled and bool(environ.get(AZURE_VARIABLE, "").strip()))


def configure(environ: Mapping[str, str]) -> TracerProvider | None:
    """A tracer provider with the exporters ``environ`` names (imports OpenTelemetry)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = azure_monitor() if environ.get(AZURE_VARIABLE, "").strip() else None
    if provider is None:
        attrs: dict[str, Any] = {"process.pid": os.getpid()}
        if not environ.get("OTEL_SERVICE_NAME"):
            attrs["service.name"] = "nearline"
        provider = TracerProvider(resource=Resource.create(attrs))
    for name in exporters(environ):
        processor = _processor(name)
        if processor is not None:
            provider.add_span_processor(processor)
    return provider


def azure_monitor() -> TracerProvider | None:
    """The Azure Monitor distro's provider (it reads the connection string), or None, logged,
    when the distro is not installed."""
    try:
        # By name: an optional exporter, not the Azure framework the HTTP layer must not import
        # (the import-linter contracts of pyproject.toml see only static imports).
        distro = importlib.import_module("azure.monitor.opentelemetry")
    except ImportError:
        log.warning(AZURE_MISSING)
        return None
    from opentelemetry import trace

    distro.configure_azure_monitor()
    provider = trace.get_tracer_provider()
    return provider if hasattr(provider, "add_span_processor") else None  # type: ignore[return-value]


def _processor(name: str) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    if name == "console":  # at once, one line per span: for people and for tests across processes
        return SimpleSpanProcessor(ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + "\n"))
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http")
            return None
        return BatchSpanProcessor(OTLPSpanExporter())
    log.warning("OTEL_TRACES_EXPORTER: %r is not an exporter nearline knows (otlp, console, none)", name)
    return None
