"""Redis key names and event stamping for the commit log, without a Redis."""

from __future__ import annotations

import msgspec
import pytest
from redis.crc import key_slot

from alphaflow_live.protocol import Batch, Event, encode
from alphaflow_server.cluster import (
    Retention,
    decode_live,
    partition_lease_key,
    partition_users_key,
    stamp,
    unsequenced,
    user_keys,
)
from alphaflow_server.cluster.scripts import COMMIT
from alphaflow_server.cluster.stamping import SEQ_MARK
from tests.support import events as ev

EVERY_EVENT_TYPE: list[Event] = [
    ev.position(),
    ev.position_closed(),
    ev.order(),
    ev.account(),
    ev.fill("f-1"),
]


@pytest.mark.parametrize("user", ["alice", "bob.smith@desk-2", "u_9"])
def test_every_key_and_the_channel_of_a_user_share_one_slot(user: str) -> None:
    keys = user_keys(user)

    slots = {key_slot(name.encode()) for name in keys.script_keys}

    assert slots == {key_slot(user.encode())}, keys
    assert len(set(keys.script_keys)) == 7


def test_the_keys_of_a_partition_share_its_slot() -> None:
    lease, users = partition_lease_key(7).encode(), partition_users_key(7).encode()

    assert key_slot(lease) == key_slot(users) == key_slot(b"p7")
    assert partition_lease_key(7) == "afl:{p7}:lease"


@pytest.mark.parametrize("user", ["", "al{ice", "bob}", "{p1}"])
def test_a_user_id_that_would_move_the_hash_tag_is_refused(user: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        user_keys(user)


@pytest.mark.parametrize("event", EVERY_EVENT_TYPE, ids=lambda e: type(e).__name__)
def test_stamping_gives_the_bytes_encode_gives_at_that_seq(event: Event) -> None:
    for seq in (1, 42, 10**12):
        assert stamp(unsequenced(event), seq) == encode(msgspec.structs.replace(event, seq=seq))


def test_an_event_with_a_seq_is_committed_without_it() -> None:
    sequenced = msgspec.structs.replace(ev.fill("f-2"), seq=5)

    assert unsequenced(sequenced) == encode(ev.fill("f-2"))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"seq":0,"type":"fill"}',
        encode(msgspec.structs.replace(ev.fill("f-3"), seq=3)),
        encode(Batch(epoch="e-1", from_seq=0, to_seq=0, server_time=ev.TS, events=[])),
        b'{"type":"fill","data":{"note":",\\"seq\\":0,"}}',
    ],
)
def test_bytes_that_are_not_an_unsequenced_event_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError, match="seq 0"):
        stamp(raw, 1)


def test_the_script_looks_for_the_same_marker() -> None:
    assert SEQ_MARK.decode() in COMMIT


def test_a_live_message_decodes_with_its_events_raw() -> None:
    events = [stamp(unsequenced(e), 4 + i) for i, e in enumerate(EVERY_EVENT_TYPE[:2])]
    message = b'{"epoch":"e-1","first_seq":4,"last_seq":5,"events":[%s]}' % b",".join(events)

    live = decode_live(message)

    assert (live.epoch, live.first_seq, live.last_seq) == ("e-1", 4, 5)
    assert [bytes(raw) for raw in live.events] == events
    with pytest.raises(msgspec.ValidationError, match="carries 2 events"):
        decode_live(message.replace(b'"last_seq":5', b'"last_seq":6'))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retain_events": 0}, "retain_events"),
        ({"retain_events": 10, "max_events": 5}, "retain_events"),
        ({"retain_seconds": -1}, "negative"),
    ],
)
def test_retention_refuses_bounds_that_cannot_hold(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retention(**kwargs)
