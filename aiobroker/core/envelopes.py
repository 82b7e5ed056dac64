"""What travels between nodes: message and acknowledgement envelopes, their shapes and the checks on them.

Between nodes travel *envelopes* (see ``docs/protocol.md``)::

    message: [0, conversation_id, from_initiator, seq, from_service, to_service, contract,
              from_instance, to_instance, message_type, body, expires_at, hops, sealed(, trace)]
    ack:     [1, conversation_id, from_initiator, next_seq, acker_instance]

``sealed`` is False (a plain body), True (sealed with the conversation's session key), or the key header
``[wrapped_key, initiator_certificate, signature]`` on a secured conversation's first message (docs/security.md).
``trace`` is there only when the message carries W3C trace context: its carried form (``aiobroker/tracecontext.py``),
or True on a secured conversation, where the context travels inside the sealed body. Without it an envelope has the
fourteen fields older nodes send and accept, so they and this node still understand each other.
``outbound.py`` makes message envelopes; ``inbound.py`` takes them and makes acknowledgements.
"""

from __future__ import annotations

from typing import Any

from ..tracecontext import valid_trace

__all__ = ["ACK", "MESSAGE", "Envelope", "same_run", "well_formed", "well_formed_ack"]

MESSAGE, ACK = 0, 1

Envelope = list[Any]


def _trace_ok(env: list[Any]) -> bool:
    """Whether an envelope of 15 fields carries a well-formed trace field (not the hot path: most have 14). True
    (the context is inside the seal) only on a sealed body, so a plain one never takes it for a context."""
    if len(env) != 15:
        return False
    trace = env[14]
    return env[13] is not False and env[13] is not None if trace is True else valid_trace(trace)


def same_run(env: Any, conv_id: str, from_initiator: bool) -> bool:
    """Whether ``env`` continues a run: the same conversation and direction, and well formed where it matters
    for delivery into an existing endpoint (the other header fields are the first envelope's business)."""
    return (
        type(env) is list
        and (len(env) == 14 or _trace_ok(env))
        and env[1] == conv_id
        and env[2] is from_initiator
        and env[0] == MESSAGE
        and type(env[3]) is int
        and type(env[9]) is str
        and type(env[10]) is bytes
    )


def well_formed(env: Any) -> bool:
    """Whether ``env`` is a message envelope with every field of its type."""
    return (
        isinstance(env, list)
        and (len(env) == 14 or _trace_ok(env))
        and env[0] == MESSAGE
        and isinstance(env[1], str)
        and isinstance(env[2], bool)
        and type(env[3]) is int
        and env[3] >= 0
        and isinstance(env[4], str)
        and isinstance(env[5], str)
        and isinstance(env[6], str)
        and isinstance(env[7], str)
        and (env[8] is None or isinstance(env[8], str))
        and isinstance(env[9], str)
        and isinstance(env[10], bytes)
        and isinstance(env[11], (int, float))
        and type(env[12]) is int
    )


def well_formed_ack(ack: Any) -> bool:
    return isinstance(ack, list) and len(ack) == 5 and type(ack[3]) is int and isinstance(ack[1], str)
