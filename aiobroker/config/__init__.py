"""Node configuration: built-in defaults, a TOML file, and command-line overrides.

:func:`load_config` builds one :class:`NodeConfig` from three layers, each later one winning:

1. the built-in defaults (the field defaults of :class:`NodeConfig`);
2. a TOML file, when a path is given;
3. overrides (from command-line flags), keyed by :class:`NodeConfig` field name; ``None`` means "not given".

Every problem raises :class:`~aiobroker.errors.ConfigError`, whose message says which file, which key
(``[node] listen``, ``service #2``), what was wrong and what is allowed. Nothing is returned half-built. A
:class:`NodeConfig` built directly in Python (embedding, tests, :func:`dataclasses.replace`) goes through the
same checks.

The file
--------

Every section and key is optional; a key left out keeps its default. An unknown section or key is an error
(with a "did you mean" hint), so a typo never falls back silently to a default. A complete example:

.. code-block:: toml

    [node]
    listen = "127.0.0.1:4022"     # host:port; "[::1]:4022" for IPv6; a bare ":4022" keeps the default host
    data_dir = "aiobroker-data"   # relative to this file's directory
    store = "sqlite"              # "sqlite", "memory", or "postgresql://USER@HOST/DB" (docs/stores.md)
    durability = "normal"         # "normal" (WAL, survives a process crash) or "full" (fsync per commit)
    log_level = "info"            # "debug", "info", "warning" or "error"
    log_format = "text"           # "text" (words) or "json" (one object a line: time, level, message, fields)
    store_wait = 0                # seconds to wait at start for a data directory another node still holds
    standby = false               # wait for the store without end, sending clients to its owner, then take over

    # [store]                     # instead of [node] store: the store and its options (docs/stores.md)
    # dsn = "postgresql://aiobroker@db.example/aiobroker"   # kind = "postgresql" follows from the URL
    # schema = "aiobroker"        # heartbeat = 1, takeover_after = 10, reconnect_for = 30 (seconds)

    [limits]
    max_message_size = 4194304    # bytes, 1 .. max_frame_size - 4096
    max_frame_size = 16777216     # bytes, 8192 .. 268435456 (256 MiB)
    max_connections = 1000        # established connections anyone may take; >= 1
    reserved_connections = 50     # more beyond max_connections, for administrators and peer nodes only, so a node
                                  # full of anonymous connections still lets its operator and its peers in; >= 0
    max_connections_per_address = 100  # ordinary connections from one IP address (and handshakes from it at once),
                                  # so one host cannot take every slot; >= 1
    idle_timeout = 600            # seconds a connection with nothing sent, received or in flight (a waiting receive,
                                  # a held lease) stays open; frees abandoned connections' slots; 0: never closed
    # max_memory = 1073741824     # bytes the node may hold for messages (queues, transmission queue, DELAYED); at
                                  # it sends are refused (Overloaded) and peers' messages wait at the peers, until
                                  # receivers bring it below 90%. Default: a quarter of the machine's memory (or of
                                  # its cgroup's memory.max), at least 64 MiB; >= 1048576
    queue_window = 10000          # waiting messages a queue keeps in memory, bodies and all, on the SQLite store;
                                  # the rest wait in the store only (not in max_memory), read back in pages as
                                  # receivers drain the queue; >= 1

    [receive]
    lease_seconds = 30            # a received batch stays locked this long without commit/rollback; > 0
    poison_rollbacks = 5          # rollbacks in a row of one conversation group that trip poison handling

    [federation]
    forwarding = false            # pass on messages meant for other nodes (in memory, with a hop limit)
    max_hops = 16                 # a forwarded message that crossed this many nodes is in a loop: dropped
    connect_timeout = 5           # seconds for a TCP connection to a peer node
    handshake_timeout = 10        # seconds for a peer's HELLO/WELCOME
    ack_timeout = 5               # seconds without an acknowledgement before reconnecting and resending
    closed_retention = 1800       # seconds an ended conversation with a remote side is remembered
    # link_token = "..."          # presented when linking to peers whose authorization is on (docs/security.md)

    [tls]                         # leave out for plain TCP; nodes of one federation all use TLS or none do
    # cert = "node.pem"           # with key: this node speaks TLS only, to clients and peers
    # key = "node.key"
    # ca = "ca.pem"               # require certificates signed by this CA, and check peers' against it
    check_hostname = true         # a peer's certificate must name the address dialled

    [dynamic_routing]             # when no route names a service (see docs/semantics.md)
    # resolve_timeout = 30        # give up on a request after this long (default: never, as in the seeds)
    max_delayed_per_service = 100000
    max_delayed_messages = 1000000

    [http]                        # the monitoring listener: /healthz, /readyz, /metrics, /api (docs/monitoring.md)
    # listen = "127.0.0.1:4080"   # "off": none; `aiobroker serve` listens on 127.0.0.1:4080 unless told otherwise
    metrics_open = false          # with authorization on, true lets /metrics answer without a token

    [security]                    # identities, bindings and authorization: see docs/security.md
    # identity = "node"           # the default owner of local services (an [[identity]] with a private key)
    authorization = false         # true: check every client's rights (a token or TLS certificate names them)
    binding_failure_cache = 600   # seconds a failed binding request is remembered; > 0

    # [resolver]                  # leave out to ask the Broker Configuration Notice service, if there is one
    # kind = "static_file"        # or dns_srv, http, chain: options as in resolvers/<kind>.py
    # path = "services.toml"

    [[message_type]]
    name = "//example/Request"
    validation = "json"

    [[message_type]]
    name = "//example/Reply"
    validation = "json"

    [[contract]]
    name = "//example/Contract"
    messages = { "//example/Request" = "initiator", "//example/Reply" = "target" }

    [[queue]]
    name = "requests"
    status = "on"                 # "on" or "off", as `alter queue --status` (true and false are accepted too)
    retention = "off"
    poison_message_handling = "on"
    # max_messages = 100000       # refuse sends once the queue holds this many messages (default: no bound)
    # max_bytes = 104857600       # ... or this many bytes of message bodies; the file's bounds apply at each start

    [[identity]]                  # who a client is (by token or TLS certificate) and what it may do
    name = "operator"
    tokens = ["change-me-long-random-string"]   # clients give it with connect(token=...) or --token
    admin = true                  # may create, alter and drop objects
    # certificate = "certs/operator.crt"         # a path relative to this file, or the PEM text itself
    # private_key = "certs/operator.key"         # only for an identity that owns services or signs bindings
    # send = ["//example/Server"]                # services it may send to ("*": any)
    # receive = ["requests"]                     # queues it may receive from ("*": any)

    [[service]]
    name = "//example/Server"
    queue = "requests"
    contracts = ["//example/Contract"]
    # owner = "node"              # the identity whose key reads secured conversations (default [security] identity)

    [[route]]                     # where messages for a service on another node go
    name = "to-orders"
    service_name = "//shop/Orders" # the CLI's --service-name; leave out for a route for any service
    address = "tcp://orders.example:4022"

    # [[binding]]                 # how to secure conversations to a service on another node
    # name = "to-orders"
    # to_service = "//shop/Orders"
    # certificate = "certs/orders-owner.crt"     # the remote owner's certificate: a path, or PEM text
    # identity = "node"           # the local identity that signs (default [security] identity)
    # anonymous = false

Keys and the :class:`NodeConfig` fields they set:

* ``[node] listen`` sets ``listen_host`` and ``listen_port`` (see :func:`parse_listen`; port 0 picks a free
  port); the other ``[node]`` and ``[limits]`` keys set the field of the same name.
* ``[node] data_dir``: a relative path is taken relative to the config file's directory (not the current
  directory); ``~`` is expanded. The result is absolute.
* ``[receive] lease_seconds`` sets ``receive_lease`` (an integer or a float); ``[receive] poison_rollbacks``
  sets ``poison_rollbacks``.
* ``[http] listen`` sets ``http_host`` and ``http_port`` (``"off"``: ``http_port`` None, no listener);
  ``[http] metrics_open`` sets ``http_metrics_open``. A :class:`NodeConfig` made in Python has no HTTP listener
  unless it sets ``http_port``; ``aiobroker serve`` has one on 127.0.0.1:4080 unless the file or ``--http`` says
  otherwise.
* ``[security] identity`` sets ``node_identity``; ``authorization`` and ``binding_failure_cache`` set the field
  of the same name.
* ``[[message_type]]``, ``[[contract]]``, ``[[queue]]``, ``[[service]]``, ``[[route]]``, ``[[identity]]`` and
  ``[[binding]]`` are the objects the node creates at start, in file order (also across kinds, so write an
  object after the objects it refers to), except that identities are created first. Each is a table with a
  string ``name``; the rest of the table is passed on as written, and the node checks it when it creates the
  object.
* In ``[[identity]]`` (``certificate``, ``private_key``) and ``[[binding]]`` (``certificate``), a value with a
  ``-----BEGIN`` line is PEM text; any other string is a file path, relative to the config file's directory,
  read when the file is loaded. Identities and bindings are checked as the file is loaded (the certificate
  parses, the key matches it, tokens are long enough), so a mistake names the file and the identity at once.
  In a :class:`NodeConfig` built in Python, a :class:`~pathlib.Path` value is read the same way (relative to
  the current directory).

Overrides
---------

``overrides`` maps :class:`NodeConfig` field names to values of the field's type; a ``None`` value is
skipped, so ``vars(args)``-style mappings with unset flags can be passed as they are. ``data_dir`` may also
be a ``str``; a relative override path stays relative to the current directory. There is no ``listen``
override: split a ``--listen`` value with :func:`parse_listen` into ``listen_host`` and ``listen_port``.

The code
--------

This package is the front: the documentation above, and the names to import (import them from
``aiobroker.config``, never from the modules inside). One concern a module:

- ``node_config``: :class:`NodeConfig`, :func:`load_config` (the three layers merged) and :func:`parse_listen`
- ``file``: the TOML file: reading it, its sections and keys, the messages for unknown ones
- ``fields``: what each field allows, one check a field, and the rules across fields
- ``objects``: the ``[[kind]]`` arrays: their order, PEM fields read from files, identities and bindings
  checked as loaded
- ``messages``: the words every message is made of: a wrong value described, the choices, "did you mean"

Imports run one way, down this list and never back up: ``node_config`` imports ``file``, ``fields``,
``objects`` and ``messages``; ``file`` imports ``fields``, ``objects`` and ``messages``; ``fields`` imports
``objects`` and ``messages``; ``objects`` imports ``messages``; ``messages`` imports nothing of aiobroker.
Only this ``__init__`` imports ``node_config``.
"""

from .fields import MIN_FRAME_SIZE
from .node_config import (
    DEFAULT_HTTP_PORT, DEFAULT_LISTEN_HOST, DEFAULT_LISTEN_PORT, NodeConfig, load_config, parse_http, parse_listen,
)  # fmt: skip
from .objects import OBJECT_KINDS

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_LISTEN_HOST",
    "DEFAULT_LISTEN_PORT",
    "MIN_FRAME_SIZE",
    "OBJECT_KINDS",
    "NodeConfig",
    "load_config",
    "parse_http",
    "parse_listen",
]
