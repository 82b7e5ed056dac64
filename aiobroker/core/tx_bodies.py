"""DELAYED messages' bodies in the store only, read back when their conversation moves on.

Theory of operation
-------------------
A message DELAYED for want of a route (or of a remote service binding) may wait for a long time, and a resolution
storm holds a hundred thousand of them at once. On a store that pages (``Store.pages``: SQLite, PostgreSQL) each is
already stored before it can wait, so its body need not stay in memory as well:

- after every write (:func:`strip`, called when the shell moves ``durable_upto`` on), the rows of DELAYED
  conversations that are now stored keep their place in the transmission queue, in order, but their body gives way
  to an :class:`~aiobroker.core.records.InStore`, which remembers its size only; the bodies leave the memory budget
  (``Budget.bodies_out``). The transmission queue's ``to_strip`` names the conversations that may have such rows
  (made DELAYED, or sent more while DELAYED), so a pass costs what changed since the last;
- when routing would move such a conversation on (to a link, or to a far side on this node), :func:`wait_for_bodies`
  holds it instead: out of DELAYED, its reason "reading its messages back from the store", and its rows' ids go to
  the shell in one :class:`~aiobroker.core.effects.BodiesWanted` per call into the core. A message sent on it
  meanwhile joins its rows behind the others, as for any DELAYED conversation, so its order holds;
- the shell reads the bodies (``node/pages.py`` ``StoreReads``: on the event loop a slice at a time from SQLite's
  file, in a worker thread from a database) and hands them to :func:`bodies_read`, which puts them back and attaches
  each conversation to the link routing chose for it (one whose far side is on this node is routed again);
- a conversation that ends meanwhile drops its rows as ever; the bodies read for it are not wanted any more;
- a start reads the transmission queue's rows without their bodies (``Store.open_paged(window, tx_bodies=False)``,
  ``loading.py``), those on their way to another node as well as the DELAYED ones: routing, deciding afresh where
  each goes, has every one read back as above as it sends it on.

Nothing but the transmission queue's own reads (routing, taking for a link, delivering here) ever needs a body, and
none of them runs on a row held back here, so no other code meets an ``InStore``. The memory store keeps every
body, as it keeps everything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .effects import BodiesWanted
from .records import ROW_BODY, ROW_ID, InStore, MessageRow, body_in_store, in_store

if TYPE_CHECKING:
    from .conversation import Endpoint
    from .ledger import Ledger

#: why a routed conversation's messages still wait, in words (``status``, ``get_conversation``)
READING = "reading its messages back from the store"
#: ``records.in_store`` without the call, for the loops over a release (a row's body is typed bytes: the InStore in
#: its place is the one thing not)
_IN_STORE: type = InStore
#: ``bodies_read``'s mark for a conversation not (or no longer) reading its bodies back
_NOT_READING = "not reading"


def with_body(row: MessageRow, body: Any) -> MessageRow:
    """``row`` with ``body`` (bytes, or an :class:`InStore`) in place of its body. A row without trace context (eight
    fields, most) is unpacked and built again: about a fifth of what slicing and joining it costs, once per DELAYED
    message each way."""
    if len(row) == 8:
        message_id, location, handle, seq, message_type, _, enqueued_at, state = row
        return (message_id, location, handle, seq, message_type, body, enqueued_at, state)
    return cast("MessageRow", (*row[:ROW_BODY], body, *row[ROW_BODY + 1 :]))


def strip(ledger: Ledger) -> None:
    """Leave in the store the bodies of the DELAYED conversations' rows stored so far (ids up to
    ``durable_upto``). A conversation with rows not yet stored stays in ``to_strip`` for the next write."""
    tx = ledger.tx
    upto = ledger.durable_upto
    all_rows = tx.rows
    done: list[str] = []
    size = 0
    for handle in tx.to_strip:
        held = all_rows.get(handle)
        if held is None:
            done.append(handle)
            continue
        rows = held if isinstance(held, list) else [held]
        kept: list[MessageRow] | None = None
        finished = True
        for i, row in enumerate(rows):
            body = row[ROW_BODY]
            if in_store(body):
                continue
            if row[ROW_ID] > upto:  # a conversation's rows are in id order: the rest are not stored yet either
                finished = False
                break
            if kept is None:
                kept = list(rows)
            n = len(body)
            kept[i] = with_body(row, body_in_store(n))
            size += n
        if kept is not None:
            tx.replace(handle, kept)
            tx.stripped[handle] = None
        if finished:
            done.append(handle)
    to_strip = tx.to_strip
    for handle in done:
        del to_strip[handle]
    if size:
        ledger.budget.bodies_out(size)


def wait_for_bodies(ledger: Ledger, ep: Endpoint, address: str | None) -> None:
    """``ep`` would move on now, to the link to ``address`` (None: to a far side on this node), but bodies of its
    rows are in the store only: it waits for them (its reason :data:`READING`), and their ids join this call's
    :class:`BodiesWanted`. Routing calls this with ``ep`` out of DELAYED already."""
    tx = ledger.tx
    handle = ep.handle
    ep.delayed = READING
    reading = tx.reading
    asked = handle in reading
    reading[handle] = address
    if asked:
        return
    request = ledger.bodies_request
    if request is None:
        request = ledger.bodies_request = BodiesWanted([], [])
        ledger.outbox.append(request)
    request.handles.append(handle)
    held = tx.rows[handle]
    if type(held) is list:
        request.ids.extend(row[ROW_ID] for row in held if type(row[ROW_BODY]) is _IN_STORE)
    elif type(held[ROW_BODY]) is _IN_STORE:  # a lone row: no list made for it
        request.ids.append(held[ROW_ID])  # type: ignore[arg-type]  # (a lone row: a tuple)


def bodies_read(ledger: Ledger, handles: list[str], bodies: dict[int, bytes]) -> tuple[int, list[str], list[str]]:
    """Put read bodies back in the rows of ``handles``; those routed to a link are attached to it now (routing
    decided where they go when it found them waiting: a conversation on its way keeps its link, as ever). Returns
    (how many messages went to links; the conversations whole again whose far side is on this node, to route
    again; those with a body the store no longer has, to fail). Conversations no longer reading (ended meanwhile)
    are skipped. A release puts back 100,000 at once, one message each: the loop is kept to what each needs."""
    tx = ledger.tx
    endpoints = ledger.endpoints
    all_rows = tx.rows
    reading = tx.reading
    stripped = tx.stripped
    get = bodies.get
    to_links: dict[str, list[str]] = {}
    last_address: str | None = None
    last_routed: list[str] = []
    attached = 0
    whole: list[str] = []
    lost: list[str] = []
    size = 0
    for handle in handles:
        address = reading.pop(handle, _NOT_READING)
        if address is _NOT_READING:
            continue
        held = all_rows[handle]
        if type(held) is list:
            restored = list(held)
            missing = False
            got_size = 0
            for i, row in enumerate(held):
                if type(row[ROW_BODY]) is _IN_STORE:
                    got = get(row[ROW_ID])
                    if got is None:
                        missing = True
                        break
                    restored[i] = with_body(row, got)
                    got_size += len(got)
            if missing:
                reading[handle] = address  # still waiting, until its failure drops it (``BrokerCore.bodies_read``)
                lost.append(handle)  # failed whole: what was read of it does not count
                continue
            all_rows[handle] = restored
            size += got_size
            count = len(restored)
        else:  # a lone row (a storm's conversations hold one message each): no list made
            row = held  # type: ignore[assignment]  # (a cast is a call: not in this loop)
            if type(row[ROW_BODY]) is _IN_STORE:
                got = get(row[ROW_ID])
                if got is None:
                    reading[handle] = address
                    lost.append(handle)
                    continue
                if len(row) == 8:  # ``with_body``, without the call: most of a release's conversations come here
                    message_id, location, owner, seq, message_type, _, enqueued_at, state = row
                    all_rows[handle] = (message_id, location, owner, seq, message_type, got, enqueued_at, state)
                else:
                    all_rows[handle] = with_body(row, got)
                size += len(got)
            count = 1
        stripped.pop(handle, None)
        endpoints[handle].delayed = None
        if address is None:
            whole.append(handle)
            continue
        if address != last_address:  # one link for a whole release, as a rule: one lookup per change of link
            routed = to_links.get(address)
            if routed is None:
                routed = to_links[address] = []
            last_address, last_routed = address, routed
        last_routed.append(handle)
        attached += count
    for address, routed in to_links.items():
        tx.attach_many(address, routed)
    if size:
        ledger.budget.bodies_in(size)
    return attached, whole, lost


def stored_size(rows: list[MessageRow]) -> int:
    """The bytes of ``rows``' bodies that are in the store only (0 for rows that hold theirs)."""
    return sum(len(row[ROW_BODY]) for row in rows if in_store(row[ROW_BODY]))
