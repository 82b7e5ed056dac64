"""The Python client: one TCP (or TLS) connection to a node, many requests in flight on it.

::

    async with aiobroker.connect("tcp://127.0.0.1:4022") as client:   # tls://host:port for a node with [tls]
        dialog = await client.begin_dialog("//shop/Client", "//shop/Orders", "DEFAULT")
        await dialog.send("DEFAULT", b"one order")
        async with await client.receive("orders", max_messages=100, timeout=5) as batch:
            for message in batch:
                ...                      # committed when the block ends, rolled back if it raises

Requests made concurrently (from several tasks, or one task's ``send_many``) share frames and writes. Every call
raises a :class:`~aiobroker.errors.BrokerError` subclass named by the node's answer; a connection that drops
fails every request in flight with :class:`~aiobroker.errors.ConnectionLost` (it may or may not have taken
effect: a send that was not acknowledged is not promised). The client does not reconnect by itself: connect
again (with several addresses, ``tcp://a:4022,b:4022``, to whichever node owns the store now) and send again
what was not acknowledged, knowing that it may have been stored already (docs/high-availability.md).

A node closes a connection that has had nothing sent, received or in flight for its ``[limits] idle_timeout``
(600 s by default; a waiting receive, even with ``timeout=None``, and a held lease are in flight), and says why:
the next request raises :class:`~aiobroker.errors.ConnectionLost` with the node's words. Connect again.

A node with ``[security] authorization`` on checks each request against the caller's identity: pass
``token=`` (an identity's bearer token) or connect with a TLS client certificate registered as an identity; a
client with neither is ``public``. A token or certificate the node does not know is refused at once with
:class:`~aiobroker.errors.NotAuthorized`, as is any request the identity has no right to (docs/security.md).
"""

from ..errors import MessageTooLarge
from .client import Client, connect
from .connection import CONNECT_TIMEOUT as CONNECT_TIMEOUT
from .connection import DEFAULT_PORT as DEFAULT_PORT
from .connection import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
from .connection import SCHEMES as SCHEMES
from .connection import FAILOVER_TIMEOUT as FAILOVER_TIMEOUT
from .connection import PendingReply, parse_url, split_url, split_urls
from .conversations import Dialog, ReceivedBatch
from .received import Message, ReceivedMessages

__all__ = [
    "Client",
    "Dialog",
    "Message",
    "PendingReply",
    "ReceivedBatch",
    "ReceivedMessages",
    "connect",
    "parse_url",
    "split_url",
    "split_urls",
    "MessageTooLarge",
]
