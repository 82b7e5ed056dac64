"""The HTTP monitoring listener: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus) and ``/api/...`` (JSON).

A node starts one when its config has ``http_port`` (``[http] listen``; ``aiobroker serve`` has one on
127.0.0.1:4080 unless told otherwise); docs/monitoring.md is the user's guide. One concern a module:

- ``listener``: binds the address, serves the app with Hypercorn on the node's event loop, measures the loop's lag
- ``app``: the Starlette app: the probes, ``/metrics``, and the API's routes
- ``api``: the ``/api/...`` endpoints (JSON)
- ``metrics``: the Prometheus collector, over a registry of the node's own
- ``access``: bearer tokens and the wire's rights, over HTTP
- ``readings``: the reads of the core's state that its public methods do not give (the one module that touches the
  core's attributes)
- ``host``: what the monitor sees of the node (a protocol, so the monitor never imports the server)

Nothing in ``aiobroker.core`` imports this package; the node's server imports :class:`MonitorListener`.
"""

from .listener import MonitorListener

__all__ = ["MonitorListener"]
