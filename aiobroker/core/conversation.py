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
from .identities import PUBLIC

__all__ = ["MAX_LIFETIME", "Endpoint", "State"]


_WHY_NOT_SEND = {
    State.DISCONNECTED_INBOUND: "the far side has ended it; call end() to close this side",
    State.ERROR: "it is in error (an Error message is in the queue, or its lifetime ran out); call end() to close it",
    State.CLOSED: "this side has ended it",
}

#: Lifetime when none is given: the seeds' maximum (2**31 - 1 seconds, about 68 years).
MAX_LIFETIME = float(2**31 - 1)


class _Rare:
    """An endpoint's fields that most endpoints never set (see ``Endpoint``)."""

    __slots__ = ("timer_at", "error", "session_key", "key_header", "far_identity")

    def __init__(
        self,
        timer_at: float | None,
        error: tuple[int, str] | None,
        session_key: bytes | None,
        key_header: list[Any] | None,
        far_identity: str | None,
    ) -> None:
        self.timer_at = timer_at
        self.error = error
        self.session_key = session_key
        self.key_header = key_header
        self.far_identity = far_identity


#: The rare fields of an endpoint whose only one set is its far identity "public": a target of a plain conversation
#: from another node, which is every conversation of a resolution storm's receiving node. One object shared by them
#: all, never changed: an endpoint that sets any rare field first takes a copy of its own (``Endpoint._rare_for``).
_PUBLIC_ONLY = _Rare(None, None, None, None, PUBLIC)

#: ``object.__new__``, bound once: ``cls.__new__`` is looked up through the class's type on every call
_new_object = object.__new__


def _far_identity_only(far_identity: str | None) -> _Rare | None:
    """The rare fields of an endpoint that sets none but ``far_identity``."""
    if far_identity is None:
        return None
    return _PUBLIC_ONLY if far_identity == PUBLIC else _Rare(None, None, None, None, far_identity)


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
        "encryption",
        "delayed",
        "secured",
        "_rare",
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
        self.encryption = encryption
        #: why this side's outgoing messages wait in the transmission queue (None: they do not)
        self.delayed = delayed
        #: dialog security (docs/security.md): None until decided (when the far side is first found on another
        #: node), then True (bodies sealed with ``session_key``) or False (plain), for the conversation's life
        self.secured = secured
        self._rare = (
            _far_identity_only(far_identity)
            if timer_at is None and error is None and session_key is None and key_header is None
            else _Rare(timer_at, error, session_key, key_header, far_identity)
        )

    @classmethod
    def new(
        cls,
        handle: str,
        conversation_id: str,
        is_initiator: bool,
        service: str,
        far_service: str,
        contract: str,
        group_id: str,
        expires_at: float,
        far_handle: str | None,
        far_broker_instance: str | None,
        state: State,
        encryption: bool,
        secured: bool | None,
        far_identity: str | None,
        /,
    ) -> Endpoint:
        """An endpoint as the core makes one when a conversation begins on this side (begun here, made for a far
        side on this node, or made by a peer's first message): nothing sent or received yet, not DELAYED, no
        timer, error or key (a secured one's ``session_key`` is set after). The same as the keyword constructor
        (``tests/test_core_endpoint.py`` compares the two), positional, for a quarter of its cost: matching
        its keywords by name among twenty-one was most of what making an endpoint cost, on every conversation a
        peer begins (a resolution storm's receiving node makes one a message)."""
        ep = _new_object(cls)
        ep.handle = handle
        ep.conversation_id = conversation_id
        ep.is_initiator = is_initiator
        ep.service = service
        ep.far_service = far_service
        ep.contract = contract
        ep.group_id = group_id
        ep.expires_at = expires_at
        ep.far_handle = far_handle
        ep.far_broker_instance = far_broker_instance
        ep.state = state
        ep.send_seq = 0
        ep.recv_seq = 0
        ep.encryption = encryption
        ep.delayed = None
        ep.secured = secured
        ep._rare = (None if far_identity is None else _PUBLIC_ONLY if far_identity == PUBLIC
                    else _Rare(None, None, None, None, far_identity))  # _far_identity_only, without a call
        return ep

    # The fields most endpoints never set live in one object made when the first is set (``_Rare``): a DELAYED
    # conversation of a resolution storm, like most, has none of them, and five slots cost it 40 bytes. A target of
    # a plain conversation from another node has one, its far identity "public": it shares one object (_PUBLIC_ONLY).

    @property
    def timer_at(self) -> float | None:
        """When the conversation timer fires (a closed endpoint: when it is retired for good), or None."""
        rare = self._rare
        return None if rare is None else rare.timer_at

    @timer_at.setter
    def timer_at(self, value: float | None) -> None:
        self._rare_for(value).timer_at = value

    @property
    def error(self) -> tuple[int, str] | None:
        """(code, description) once the conversation is in error, else None."""
        rare = self._rare
        return None if rare is None else rare.error

    @error.setter
    def error(self, value: tuple[int, str] | None) -> None:
        self._rare_for(value).error = value

    @property
    def session_key(self) -> bytes | None:
        """The conversation's body key, once dialog security is decided for it."""
        rare = self._rare
        return None if rare is None else rare.session_key

    @session_key.setter
    def session_key(self, value: bytes | None) -> None:
        self._rare_for(value).session_key = value

    @property
    def key_header(self) -> list[Any] | None:
        """The initiator's key header, sent with its message 0 (made once, so a resend is the same bytes)."""
        rare = self._rare
        return None if rare is None else rare.key_header

    @key_header.setter
    def key_header(self, value: list[Any] | None) -> None:
        self._rare_for(value).key_header = value

    @property
    def far_identity(self) -> str | None:
        """The target side: who the initiator is (an identity name, or "public")."""
        rare = self._rare
        return None if rare is None else rare.far_identity

    @far_identity.setter
    def far_identity(self, value: str | None) -> None:
        self._rare_for(value).far_identity = value

    def _rare_for(self, value: object) -> _Rare:
        """The rare fields' object to set ``value`` in: made on the first value that is not None (setting None
        where there is none sets it on a throwaway, leaving the endpoint without one); the shared one of a public
        far identity (``_PUBLIC_ONLY``) is first copied into one of the endpoint's own."""
        rare = self._rare
        if rare is None:
            rare = _Rare(None, None, None, None, None)
            if value is not None:
                self._rare = rare
        elif rare is _PUBLIC_ONLY:
            rare = self._rare = _Rare(None, None, None, None, PUBLIC)
        return rare

    def why_not_send(self) -> str | None:
        """None if this side may send now, else the reason in words."""
        return None if self.state.can_send else _WHY_NOT_SEND[self.state]

    def to_state(self) -> list[Any]:
        """Plain data for the store; :meth:`from_state` reverses it."""
        rare = self._rare
        if rare is None:
            timer_at = error = session_key = key_header = far_identity = None
        else:
            timer_at, session_key, key_header, far_identity = (
                rare.timer_at,
                rare.session_key,
                rare.key_header,
                rare.far_identity,
            )
            error = list(rare.error) if rare.error else None
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
            timer_at,
            self.encryption,
            error,
            self.delayed,
            self.secured,
            session_key,
            key_header,
            far_identity,
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
