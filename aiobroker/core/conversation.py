"""Conversation endpoints and their states.

Theory of operation
-------------------
A conversation (dialog) has two endpoints, one per side, each with its own *handle*. The initiator's endpoint is
made by ``begin_dialog``; the target's when the first message arrives. Each endpoint numbers the messages it sends
(``send_seq``) and remembers the next number it expects (``recv_seq``), so delivery is exactly once and in order
per direction.

An endpoint's state, and the table of how states change, are in ``conversation_states.py`` (``State`` is imported
here too, where the rest of the core has always found it).
"""

from __future__ import annotations

from typing import Any

from .conversation_states import State

__all__ = ["MAX_LIFETIME", "Endpoint", "State"]


_WHY_NOT_SEND = {
    State.DISCONNECTED_INBOUND: "the far side has ended it; call end() to close this side",
    State.ERROR: "it is in error (an Error message is in the queue, or its lifetime ran out); call end() to close it",
    State.CLOSED: "this side has ended it",
}

#: Lifetime when none is given: the seeds' maximum (2**31 - 1 seconds, about 68 years).
MAX_LIFETIME = float(2**31 - 1)


class Endpoint:
    """One side of a conversation. Mutable; the core owns it and marks it dirty for the store on every change."""

    __slots__ = (
        "handle",
        "conversation_id",
        "is_initiator",
        "service",
        "far_service",
        "contract",
        "group_id",
        "far_handle",
        "far_broker_instance",
        "state",
        "expires_at",
        "send_seq",
        "recv_seq",
        "timer_at",
        "encryption",
        "error",
        "delayed",
        "secured",
        "session_key",
        "key_header",
        "far_identity",
    )

    def __init__(
        self,
        *,
        handle: str,
        conversation_id: str,
        is_initiator: bool,
        service: str,
        far_service: str,
        contract: str,
        group_id: str,
        expires_at: float,
        far_handle: str | None = None,
        far_broker_instance: str | None = None,
        state: State = State.STARTED_OUTBOUND,
        send_seq: int = 0,
        recv_seq: int = 0,
        timer_at: float | None = None,
        encryption: bool = False,
        error: tuple[int, str] | None = None,
        delayed: str | None = None,
        secured: bool | None = None,
        session_key: bytes | None = None,
        key_header: list[Any] | None = None,
        far_identity: str | None = None,
    ) -> None:
        self.handle = handle
        self.conversation_id = conversation_id
        self.is_initiator = is_initiator
        self.service = service
        self.far_service = far_service
        self.contract = contract
        self.group_id = group_id
        self.expires_at = expires_at
        self.far_handle = far_handle
        self.far_broker_instance = far_broker_instance
        self.state = state
        self.send_seq = send_seq
        self.recv_seq = recv_seq
        self.timer_at = timer_at
        self.encryption = encryption
        self.error = error
        #: why this side's outgoing messages wait in the transmission queue (None: they do not)
        self.delayed = delayed
        #: dialog security (docs/security.md): None until decided (when the far side is first found on another
        #: node), then True (bodies sealed with ``session_key``) or False (plain), for the conversation's life
        self.secured = secured
        self.session_key = session_key
        #: the initiator's key header, sent with its message 0 (made once, so a resend is the same bytes)
        self.key_header = key_header
        #: the target side: who the initiator is (an identity name, or "public")
        self.far_identity = far_identity

    def why_not_send(self) -> str | None:
        """None if this side may send now, else the reason in words."""
        return None if self.state.can_send else _WHY_NOT_SEND[self.state]

    def to_state(self) -> list[Any]:
        """Plain data for the store; :meth:`from_state` reverses it."""
        return [
            self.conversation_id,
            self.is_initiator,
            self.service,
            self.far_service,
            self.contract,
            self.group_id,
            self.expires_at,
            self.far_handle,
            self.far_broker_instance,
            self.state._value_,  # not .value: an enum's property costs 4x the attribute, on every endpoint written
            self.send_seq,
            self.recv_seq,
            self.timer_at,
            self.encryption,
            list(self.error) if self.error else None,
            self.delayed,
            self.secured,
            self.session_key,
            self.key_header,
            self.far_identity,
        ]

    @classmethod
    def from_state(cls, handle: str, s: list[Any]) -> Endpoint:
        return cls(
            handle=handle,
            conversation_id=s[0],
            is_initiator=s[1],
            service=s[2],
            far_service=s[3],
            contract=s[4],
            group_id=s[5],
            expires_at=s[6],
            far_handle=s[7],
            far_broker_instance=s[8],
            state=State(s[9]),
            send_seq=s[10],
            recv_seq=s[11],
            timer_at=s[12],
            encryption=s[13],
            error=(s[14][0], s[14][1]) if s[14] else None,
            delayed=s[15],
            # endpoints stored before dialog security have 16 fields
            secured=s[16] if len(s) > 16 else None,
            session_key=s[17] if len(s) > 17 else None,
            key_header=s[18] if len(s) > 18 else None,
            far_identity=s[19] if len(s) > 19 else None,
        )

    def describe(self) -> dict[str, Any]:
        """What ``status`` and ``get_conversation`` show."""
        return {
            "handle": self.handle,
            "conversation_id": self.conversation_id,
            "is_initiator": self.is_initiator,
            "service": self.service,
            "far_service": self.far_service,
            "contract": self.contract,
            "group_id": self.group_id,
            "far_broker_instance": self.far_broker_instance,
            "state": self.state.value,
            "state_desc": self.state.name.lower(),
            "expires_at": self.expires_at,
            "send_seq": self.send_seq,
            "recv_seq": self.recv_seq,
            "timer_at": self.timer_at,
            "error": list(self.error) if self.error else None,
            "delayed": self.delayed,
            "encryption": self.encryption,
            "secured": self.secured,
            "far_identity": self.far_identity,
        }

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.handle[:8]} {'init' if self.is_initiator else 'target'} {self.service!r}"
            f"->{self.far_service!r} {self.state.value} send={self.send_seq} recv={self.recv_seq}>"
        )
