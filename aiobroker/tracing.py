"""OpenTelemetry spans for messages, when the ``otel`` extra is installed (``pip install aiobroker[otel]``).

Theory of operation
-------------------
A message carries W3C trace context whether or not OpenTelemetry is installed (``aiobroker/tracecontext.py``:
the client passes ``traceparent``, the node stores and carries it, the receiver reads it). This module adds spans
around that, following OpenTelemetry's messaging semantic conventions, through the *global* TracerProvider (the
application's, or ``opentelemetry-instrument``'s). It is the only module of aiobroker that imports
``opentelemetry``, and only when a span is first made. Spans are made only while a TracerProvider is set
(:func:`recording`, a look at ``sys.modules`` and one ``isinstance`` per send or receive batch): without the extra,
or without a provider, a message costs nothing more than before.

=====================  ==========  =======================  =========================================================
where                  kind        name                     parent, links
=====================  ==========  =======================  =========================================================
client ``send``        PRODUCER    ``send <service>``       the current span, or the ``traceparent`` given; the
                                                            messages carry this span's context (the given one if one
                                                            was given)
node: a send stored    PRODUCER    ``send <service>``       the message's context (one span per message with one)
node: forwarding       PRODUCER    ``forward <service>``    the message's context (none on a secured conversation:
                                                            the forwarder cannot read it)
node: handed out       CONSUMER    ``receive <service>``    the message's context (one span per message)
client ``receive``     CONSUMER    ``receive <queue>``      the current span; a link to each message's context
``process_span(m)``    CONSUMER    ``process <service>``    the message's context, and a link to it
=====================  ==========  =======================  =========================================================

The node's spans are children of the context the message carries, never of each other, and the message carries the
same context from sender to receiver: what the receiver reads is what the sender sent, and one trace (the sender's)
shows the message's path through every node, each node's span naming its broker instance. Attributes:
``messaging.system`` = ``aiobroker``, ``messaging.operation.type`` (send, receive, process),
``messaging.operation.name``, ``messaging.destination.name`` (the service), ``messaging.message.conversation_id``,
``messaging.message.id`` (the node's message id, where there is one), ``messaging.batch.message_count`` (batches),
and ``aiobroker.node.instance`` on the node's spans.

A node started by ``aiobroker serve`` with the environment variable ``AIOBROKER_OTEL_SPANS_FILE`` set writes its
spans to that file, one JSON object a line (:func:`export_from_env`), for a look without a collector and for the
tests.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

from .tracecontext import make_trace, split_trace
from .version import __version__

__all__ = [
    "ENABLED",
    "SPANS_FILE_ENV",
    "client_receive",
    "client_send",
    "export_from_env",
    "link_messages",
    "node_spans",
    "process_span",
    "recording",
]

#: Whether the ``otel`` extra (opentelemetry-api) is installed. Found without importing it.
ENABLED: Final = importlib.util.find_spec("opentelemetry") is not None and (
    importlib.util.find_spec("opentelemetry.trace") is not None
)
#: the environment variable that makes ``aiobroker serve`` write its spans to a file (JSON lines)
SPANS_FILE_ENV: Final = "AIOBROKER_OTEL_SPANS_FILE"
SYSTEM: Final = "aiobroker"
INSTRUMENTATION: Final = "aiobroker"

_api: Any = None  # (trace module, propagator), imported on first use


class Message(Protocol):
    """What a span needs of a received message (:class:`aiobroker.client.Message`, which imports this module)."""

    @property
    def trace(self) -> str | None: ...
    @property
    def message_id(self) -> int: ...
    @property
    def service_name(self) -> Any: ...
    @property
    def conversation_id(self) -> Any: ...


def _otel() -> Any:
    global _api
    if _api is None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _api = (trace, TraceContextTextMapPropagator())
    return _api


def _tracer() -> Any:
    return _otel()[0].get_tracer(INSTRUMENTATION, __version__)


def _context(trace: str | None) -> Any:
    """The OpenTelemetry context whose parent is a carried trace context (None: no parent given)."""
    if trace is None:
        return None
    traceparent, tracestate = split_trace(trace)
    carrier = {"traceparent": traceparent, "tracestate": tracestate} if tracestate else {"traceparent": traceparent}
    return _otel()[1].extract(carrier)


def _carried(span: Any) -> str | None:
    """A span's context in carried form, or None if it has none worth carrying (no SDK: a non-recording span)."""
    trace, propagator = _otel()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span))
    return make_trace(carrier.get("traceparent"), carrier.get("tracestate"))


def _attributes(operation: str, kind: str, destination: str | None, **more: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
    }
    if destination:
        attributes["messaging.destination.name"] = destination
    attributes.update((k.replace("__", "."), v) for k, v in more.items() if v is not None)
    return attributes


def recording() -> bool:
    """Whether spans are wanted: a TracerProvider was set (an SDK's, or ``opentelemetry-instrument``'s). The client
    and the node make spans, and look for traced messages in a batch, only then, so a process without one pays
    nothing per message for the extra being installed. Nobody can have set a provider without importing
    ``opentelemetry.trace``, so until someone has, this does not import it either."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


# --------------------------------------------------------------------------------------------------- client


@contextmanager
def client_send(destination: str | None, conversation_id: str | None, count: int, trace: str | None) -> Iterator[str | None]:
    """The client's send span around one ``send`` request; yields the context the messages carry: ``trace`` if
    the caller gave one (this span is its child), else this span's (None without a recording SDK)."""
    trace_api, _ = _otel()
    attributes = _attributes(
        "send",
        "send",
        destination,
        messaging__message__conversation_id=conversation_id,
        messaging__batch__message_count=count if count > 1 else None,
    )
    with _tracer().start_as_current_span(
        f"send {destination}" if destination else "send",
        context=_context(trace),
        kind=trace_api.SpanKind.PRODUCER,
        attributes=attributes,
    ) as span:
        yield trace if trace is not None else _carried(span)


@contextmanager
def client_receive(queue: str) -> Iterator[Any]:
    """The client's receive span; the caller adds a link per traced message with :func:`link_messages`."""
    trace_api, _ = _otel()
    with _tracer().start_as_current_span(
        f"receive {queue}", kind=trace_api.SpanKind.CONSUMER, attributes=_attributes("receive", "receive", queue)
    ) as span:
        yield span


def link_messages(span: Any, messages: Iterable[Message]) -> None:
    """Link the receive span to the context of each message that carries one (messaging conventions: a batch's
    receive span links to every message's creation context)."""
    if not span.is_recording():
        return  # no SDK, or not sampled: nothing to look at per message
    trace_api, _ = _otel()
    count = 0
    for message in messages:
        count += 1
        if message.trace is not None:
            parent = trace_api.get_current_span(_context(message.trace)).get_span_context()
            span.add_link(parent, {"messaging.message.id": str(message.message_id)})
    span.set_attribute("messaging.batch.message_count", count)


@contextmanager
def process_span(message: Message) -> Iterator[Any]:
    """A span for processing one received message: a child of the context it carries (and linked to it), so the
    application's work joins the sender's trace. Without the ``otel`` extra it yields None and records nothing."""
    if not ENABLED:
        yield None
        return
    trace_api, _ = _otel()
    parent = _context(message.trace)
    links = []
    if parent is not None:
        links.append(trace_api.Link(trace_api.get_current_span(parent).get_span_context()))
    with _tracer().start_as_current_span(
        f"process {message.service_name}",
        context=parent,
        kind=trace_api.SpanKind.CONSUMER,
        links=links,
        attributes=_attributes(
            "process",
            "process",
            message.service_name,
            messaging__message__conversation_id=message.conversation_id,
            messaging__message__id=str(message.message_id),
        ),
    ) as span:
        yield span


# ----------------------------------------------------------------------------------------------------- node


def node_spans(
    operation: str,
    destination: str,
    traces: Iterable[tuple[str | None, Any]],
    *,
    instance: str,
    conversation_id: str | None = None,
) -> None:
    """One short span per message with trace context, a child of that context: ``operation`` is ``send`` (a
    client's send stored), ``forward`` or ``receive`` (handed to a receiver). ``traces`` yields (trace, message
    id or None)."""
    trace_api, _ = _otel()
    tracer = _tracer()
    kind = trace_api.SpanKind.CONSUMER if operation == "receive" else trace_api.SpanKind.PRODUCER
    operation_type = "receive" if operation == "receive" else "send"
    for trace, message_id in traces:
        if trace is None:
            continue
        tracer.start_span(
            f"{operation} {destination}",
            context=_context(trace),
            kind=kind,
            attributes=_attributes(
                operation,
                operation_type,
                destination,
                messaging__message__conversation_id=conversation_id,
                messaging__message__id=None if message_id is None else str(message_id),
                aiobroker__node__instance=instance,
            ),
        ).end()


def export_from_env() -> bool:
    """If ``AIOBROKER_OTEL_SPANS_FILE`` names a file and the SDK is installed, install a global TracerProvider
    that appends each span to it as one JSON line as it ends. Returns whether it did."""
    path = os.environ.get(SPANS_FILE_ENV)
    if not path or not ENABLED or importlib.util.find_spec("opentelemetry.sdk") is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    out = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the process's life; each span is flushed
    provider = TracerProvider(resource=Resource.create({"service.name": "aiobroker"}))
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n"))
    )
    _otel()[0].set_tracer_provider(provider)
    return True
