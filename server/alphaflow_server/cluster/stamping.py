"""Events as the bytes they travel in, before and after their seq is stamped into them.

A commit hands Redis its events encoded once, by ``protocol.encode``, with
``seq`` 0; the commit script writes each event's seq into those bytes (it
alone knows the next seq, whichever node commits) and stores, publishes and
later replays exactly ``encode(event with its seq)``: the bytes a batch frame
joins (``protocol.encode_batch``) without decoding or encoding again. The
committing node gets the same bytes by the same splice (``stamp``), without a
read.

The splice relies on the shape msgspec gives every event: the tag first, the
seq second (``{"type":"fill","seq":0,...``); ``unsequenced`` checks it, and
the unit tests hold ``stamp`` against ``encode`` for every event type.
"""

from __future__ import annotations

import re

import msgspec

from alphaflow_live.protocol import Event, encode

# The marker the script looks for, and what may stand before it (nothing but the tag).
SEQ_MARK = b',"seq":0,'
_HEAD = re.compile(rb'\{"type":"[A-Za-z_]+"\Z')


class LiveCommit(msgspec.Struct, frozen=True, kw_only=True):
    """One commit as published on the user's shard channel: all a node needs to deliver it.

    ``events`` are the stamped events, still raw: ``bytes(raw)`` is what a batch frame joins.
    """

    epoch: str
    first_seq: int
    last_seq: int
    events: list[msgspec.Raw]


_live_decoder = msgspec.json.Decoder(LiveCommit)


def decode_live(message: bytes) -> LiveCommit:
    """A message of the ``live`` channel; ``msgspec.ValidationError`` if it is not one."""
    live = _live_decoder.decode(message)
    if live.last_seq - live.first_seq + 1 != len(live.events):
        raise msgspec.ValidationError(
            f"live commit {live.first_seq}..{live.last_seq} carries {len(live.events)} events"
        )
    return live


def unsequenced(event: Event) -> bytes:
    """The event encoded for a commit: as a publisher sends it, with ``seq`` 0."""
    if event.seq != 0:
        event = msgspec.structs.replace(event, seq=0)
    raw = encode(event)
    _split(raw)
    return raw


def stamp(raw: bytes, seq: int) -> bytes:
    """``raw`` (from ``unsequenced``) with ``seq`` written in: the bytes of ``encode(event)`` at that seq."""
    head, tail = _split(raw)
    return b'%s,"seq":%d,%s' % (head, seq, tail)


def check_unsequenced(raw: bytes) -> None:
    """Raise ``ValueError`` unless ``raw`` is an event encoded by ``unsequenced``."""
    _split(raw)


def _split(raw: bytes) -> tuple[bytes, bytes]:
    head, mark, tail = raw.partition(SEQ_MARK)
    if not mark or not _HEAD.match(head):
        raise ValueError(
            f"not an event encoded with seq 0 by protocol.encode: {raw[:40]!r}... "
            "(encode it with cluster.unsequenced)"
        )
    return head, tail
