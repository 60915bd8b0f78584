"""The portfolio engine over the wire, durable state across restarts, and the simulator."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from decimal import Decimal

import pytest

from alphaflow_live.protocol import Ack, Batch, FillEvent, Snapshot, Subscribed
from alphaflow_server.auth import TokenStore, load_users_file, save_users_file
from tests.support import admin
from tests.support import events as ev
from tests.support.client import (
    Publisher,
    StreamClient,
    auth,
    handshake,
    recv_until,
    rest_snapshot,
    same_portfolio,
    send,
    state_of,
)
from tests.support.server import Tokens
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(90)

D = Decimal


def buy(symbol: str, qty: str, price: str, fill_id: str) -> FillEvent:
    return ev.fill(fill_id, symbol=symbol, qty=qty, price=price)


def sell(symbol: str, qty: str, price: str, fill_id: str) -> FillEvent:
    event = ev.fill(fill_id, symbol=symbol, qty=qty, price=price)
    event.data.side = "sell"
    return event


async def test_fills_and_prices_give_exact_pnl_including_a_short_and_a_flip(
    start_server, tokens: Tokens
) -> None:
    # Mark interval 0: every tick re-marks at once, so a snapshot right after a tick shows it.
    server = start_server("--batch-window-ms", "5", "--mark-interval-ms", "0")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    feed = await Publisher.connect(server.ws_base, tokens.service)

    await feed.prices([ev.tick("AAPL", "187.00"), ev.tick("TSLA", "250.00")])  # the day's opening marks
    await feed.publish("alice", [ev.account(cash="100000.00")])
    await feed.publish("alice", [buy("AAPL", "10", "187.20", "f1"), buy("AAPL", "5", "190.00", "f2")])
    await feed.prices([ev.tick("AAPL", "191.00")])
    await feed.publish("alice", [sell("TSLA", "10", "250.00", "f3")])  # a short from flat
    await feed.prices([ev.tick("TSLA", "240.00")])
    aapl_short_snapshot = await rest_snapshot(server.http_base, tokens.alice)
    seqs = await feed.publish("alice", [buy("TSLA", "15", "245.00", "f4")])  # flips the short to long 5
    await client.pump_until_seq(seqs[-1])

    short = next(p for p in aapl_short_snapshot.positions if p.symbol == "TSLA")
    assert (short.qty, short.side, short.avg_entry_price) == (D("-10"), "short", D("250.000000"))
    assert (short.market_value, short.cost_basis) == (D("-2400.0000"), D("-2500.0000"))
    assert (short.unrealized_pl, short.unrealized_plpc) == (D("100.0000"), D("0.040000"))

    aapl = client.state.positions["AAPL"]
    assert aapl.qty == D("15")
    assert aapl.avg_entry_price == D("188.133333")  # (10 × 187.20 + 5 × 190.00) / 15
    assert aapl.current_price == D("191.000000")
    assert (aapl.market_value, aapl.cost_basis) == (D("2865.0000"), D("2822.0000"))
    assert aapl.unrealized_pl == D("43.0000")
    assert aapl.unrealized_plpc == D("0.015237")  # 43 / 2822
    assert aapl.change_today == D("0.021390")  # (191 − 187) / 187
    assert aapl.unrealized_intraday_pl == D("43.0000"), "opened today: intraday P&L is all of it"

    tsla = client.state.positions["TSLA"]
    assert (tsla.qty, tsla.side, tsla.avg_entry_price) == (D("5"), "long", D("245.000000")), (
        "entry resets on a flip"
    )
    assert (tsla.market_value, tsla.unrealized_pl) == (D("1200.0000"), D("-25.0000"))

    account = client.state.account
    assert account is not None
    # cash: 100000 − 1872 − 950 + 2500 − 3675
    assert account.cash == D("96003.0000")
    assert account.realized_pl_today == D("50.0000")  # the 10 short closed at 245: 10 × (250 − 245)
    assert (account.long_market_value, account.short_market_value) == (D("4065.0000"), D("0.0000"))
    assert account.equity == account.portfolio_value == D("100068.0000")
    assert account.last_equity == D("100000.0000")


async def test_closing_a_position_to_zero_streams_position_closed(start_server, tokens: Tokens) -> None:
    server = start_server("--batch-window-ms", "5")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    feed = await Publisher.connect(server.ws_base, tokens.service)

    await feed.publish("alice", [buy("MSFT", "3", "400.00", "m1")])
    seqs = await feed.publish("alice", [sell("MSFT", "3", "410.00", "m2")])
    await client.pump_until_seq(seqs[-1])

    assert "MSFT" not in client.state.positions
    assert client.state.account is not None and client.state.account.realized_pl_today == D("30.0000")
    kinds = [type(e).__name__ for b in client.batches for e in b.events if e.seq in seqs]
    assert kinds == ["FillEvent", "PositionClosedEvent", "AccountEvent"]


async def test_a_published_position_is_authoritative(start_server, tokens: Tokens) -> None:
    server = start_server()
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [buy("NVDA", "10", "120.00", "n1")])

    await feed.publish("alice", [ev.position("NVDA", qty="7", price="118.00")])  # the broker says 7 @ 118
    await feed.prices([ev.tick("NVDA", "121.00")])
    snapshot = await rest_snapshot(server.http_base, tokens.alice)

    nvda = snapshot.positions[0]
    assert (nvda.qty, nvda.avg_entry_price, nvda.unrealized_pl) == (D("7"), D("118.000000"), D("21.0000"))


async def test_ticks_re_mark_a_holder_at_most_once_per_interval_and_a_fill_takes_the_stale_marks(
    start_server, tokens: Tokens
) -> None:
    server = start_server("--mark-interval-ms", "60000")  # no second re-mark within the test
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [buy("AAPL", "10", "100.00", "b1")])
    before = await rest_snapshot(server.http_base, tokens.alice)

    for cents in range(1, 21):  # the first re-marks at once (a leading edge), the rest wait their turn
        await feed.prices([ev.tick("AAPL", f"101.{cents:02d}")])
    after_ticks = await rest_snapshot(server.http_base, tokens.alice)
    seqs = await feed.publish("alice", [buy("MSFT", "1", "400.00", "m1")])
    after_fill = await rest_snapshot(server.http_base, tokens.alice)

    assert after_ticks.seq == before.seq + 2, "twenty ticks, one re-mark: a position and an account"
    assert after_ticks.positions[0].current_price == D("101.010000")
    assert len(seqs) == 4, "the stale AAPL position, then the fill, its position and the account"
    aapl = next(p for p in after_fill.positions if p.symbol == "AAPL")
    assert (aapl.current_price, aapl.unrealized_pl) == (D("101.200000"), D("12.0000"))


async def test_marks_acknowledged_but_not_yet_re_marked_survive_a_kill(start_server, tokens: Tokens) -> None:
    server = start_server("--mark-interval-ms", "60000")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [buy("AAPL", "10", "100.00", "b1")])
    await feed.prices([ev.tick("AAPL", "101.00")])  # re-marked at once
    ack = await feed.prices([ev.tick("AAPL", "102.50")])  # durable, its re-mark waits
    waiting = await rest_snapshot(server.http_base, tokens.alice)

    await asyncio.to_thread(server.stop, signal.SIGKILL)
    await asyncio.to_thread(server.start)
    after = await rest_snapshot(server.http_base, tokens.alice)

    assert isinstance(ack, Ack)
    assert waiting.positions[0].current_price == D("101.000000")
    assert after.epoch == waiting.epoch and after.seq == waiting.seq + 2, "the restart re-marked AAPL"
    assert (after.positions[0].current_price, after.account.long_market_value) == (
        D("102.500000"),
        D("1025.0000"),
    )


async def test_a_client_resumes_exactly_after_the_server_is_killed_and_restarted(
    start_server, tokens
) -> None:
    server = start_server("--batch-window-ms", "20")
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    await client.subscribe()
    epoch = client.welcome.epoch
    feed = await Publisher.connect(server.ws_base, tokens.service)
    for i in range(10):
        await feed.publish("alice", [buy("AAPL", "1", f"{190 + i}.00", f"k-{i}")])
    await client.pump_one()  # the client has read part of the stream, not all of it

    await asyncio.to_thread(server.stop, signal.SIGKILL)
    await asyncio.to_thread(server.start)
    feed = await Publisher.connect(server.ws_base, tokens.service)
    for i in range(10, 20):
        last = await feed.publish("alice", [buy("AAPL", "1", f"{190 + i}.00", f"k-{i}")])
    # Drain what the dead connection still delivered, then reconnect and resume.
    while True:
        try:
            await client.pump_one(timeout=5)
        except Exception:
            break
    resumed = await StreamClient.connect(server.ws_base, tokens.alice)
    resumed.state, resumed.fill_ids = client.state, client.fill_ids
    reply = await resumed.subscribe(resume={"epoch": epoch, "seq": client.state.seq})
    await resumed.pump_until_seq(last[-1])

    assert resumed.welcome.epoch == epoch, "the epoch survives a kill -9"
    assert reply.recovered is True
    assert resumed.fill_ids == [f"k-{i}" for i in range(20)], "every fill once, in order"
    assert same_portfolio(resumed.state, state_of(await rest_snapshot(server.http_base, tokens.alice)))
    assert resumed.state.positions["AAPL"].qty == 20


async def test_state_survives_a_clean_restart_with_the_same_epoch(start_server, tokens: Tokens) -> None:
    server = start_server()
    feed = await Publisher.connect(server.ws_base, tokens.service)
    await feed.publish("alice", [buy("AMD", "4", "150.00", "a1"), ev.order("o-1", "accepted")])
    before = await rest_snapshot(server.http_base, tokens.alice)
    await feed.close()

    await asyncio.to_thread(server.restart)
    after = await rest_snapshot(server.http_base, tokens.alice)

    assert (after.epoch, after.seq) == (before.epoch, before.seq)
    assert same_portfolio(state_of(after), state_of(before))
    assert [f.id for f in after.fills] == ["a1"]


async def test_the_streaming_flag_survives_a_restart(start_server, tokens: Tokens) -> None:
    from tests.support.admin import admin_request

    server = start_server()
    await admin_request(server, tokens, {"type": "set_streaming", "id": 1, "enabled": False})

    await asyncio.to_thread(server.restart)

    assert (await handshake(server.ws_base, "/ws/portfolio", auth(tokens.alice)))[0] == 503


async def test_a_corrupt_state_file_stops_the_server_with_a_clear_error(
    start_server, tmp_path, users
) -> None:
    from tests.support.cli import run_cli

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "alphaflow-state.sqlite3").write_bytes(b"this is not a database" * 100)
    args = [
        "serve",
        "--port",
        "0",
        "--source",
        "none",
        "--users-file",
        str(users[0]),
        "--state-dir",
        str(state_dir),
    ]

    refused = await asyncio.to_thread(run_cli, *args)
    assert refused.returncode == 2
    assert "unreadable" in refused.stderr and "--reset-state" in refused.stderr

    server = start_server("--state-dir", str(state_dir), "--reset-state")
    assert (await rest_snapshot(server.http_base, users[1].alice)).seq == 0
    assert any(p.name.startswith("alphaflow-state.sqlite3.reset-") for p in state_dir.iterdir())


async def test_the_simulator_streams_a_live_demo_portfolio(start_server, tmp_path) -> None:
    users_file = tmp_path / "users.json"
    store = TokenStore()
    admin_token = store.add("ops", "admin")
    load_token = store.add("sim-0001", "user")
    save_users_file(users_file, store)
    server = start_server(
        "--source", "sim", "--sim-users", "2", "--batch-window-ms", "50", users_file=users_file
    )
    demo_token = (tmp_path / "demo.token").read_text().strip()

    demo = await StreamClient.connect(server.ws_base, demo_token)
    await demo.subscribe()

    async def moving() -> bool:
        await demo.pump_one(timeout=10)
        return len(demo.batches) >= 5

    await async_wait_until(moving, timeout=30, what="the simulated market to move the demo portfolio")
    assert demo.state.positions, "the demo user starts with positions"
    assert demo.state.account is not None and demo.state.account.equity > 0
    assert f"export ALPHAFLOW_TOKEN={demo_token}" in server.log()
    assert load_users_file(users_file).get("demo") is not None
    other = await rest_snapshot(server.http_base, load_token)
    assert other.positions and {p.symbol for p in other.positions} != set(demo.state.positions)
    stats = await admin.stats(server.http_base, admin_token)
    assert stats["events_in"] > 0 and stats["health"] == "healthy"


async def test_the_simulator_carries_on_from_the_kept_book_after_a_restart(start_server, tmp_path) -> None:
    """A restart on the same state must not open the demo account again: a fresh account's cash
    beside the positions kept would add about the whole opening cash to its equity."""
    users_file = tmp_path / "users.json"
    server = start_server("--source", "sim", "--batch-window-ms", "50", users_file=users_file)
    demo_token = (tmp_path / "demo.token").read_text().strip()

    async def demo_account() -> Snapshot:
        snapshot = await rest_snapshot(server.http_base, demo_token)
        assert snapshot.account is not None and snapshot.positions
        return snapshot

    async def has_account() -> bool:
        snapshot = await rest_snapshot(server.http_base, demo_token)
        return snapshot.account is not None and bool(snapshot.positions)

    await async_wait_until(has_account, timeout=30, what="the demo account to open")
    before = await demo_account()
    await asyncio.to_thread(server.restart)
    await async_wait_until(
        lambda: _moved_past(server.http_base, demo_token, before.seq),
        timeout=30,
        what="the market after a restart",
    )
    after = await demo_account()

    assert before.account is not None and after.account is not None
    opening_cash = Decimal(100_000)
    jump = abs(after.account.equity - before.account.equity)
    assert jump < opening_cash / 10, f"equity went from {before.account.equity} to {after.account.equity}"
    assert after.account.cash < opening_cash + abs(before.account.cash), "a second opening's cash was added"


async def _moved_past(http_base: str, token: str, seq: int) -> bool:
    return (await rest_snapshot(http_base, token)).seq > seq


async def test_a_long_history_is_checkpointed_pruned_and_restored_after_a_kill(start_server, tokens) -> None:
    server = start_server("--retain-events", "500", "--retain-seconds", "0")
    feed = await Publisher.connect(server.ws_base, tokens.service)
    symbols = ["AAPL", "MSFT", "NVDA", "TSLA"]
    for round_ in range(60):
        fills = [buy(symbols[i % 4], "1", f"{100 + i % 7}.25", f"h-{round_}-{i}") for i in range(50)]
        fills += [sell(symbols[round_ % 4], "3", "101.75", f"s-{round_}")]
        last = await feed.publish("alice", fills)
    await feed.prices([ev.tick(s, "105.00") for s in symbols])
    before = await rest_snapshot(server.http_base, tokens.alice)
    state_files = list(server.state_dir.glob("alphaflow-state.sqlite3*"))

    await asyncio.to_thread(server.stop, signal.SIGKILL)
    await asyncio.to_thread(server.start)
    after = await rest_snapshot(server.http_base, tokens.alice)
    client = await StreamClient.connect(server.ws_base, tokens.alice)
    recent, replay = await resume_reply(client, before.epoch, last[-1] - 100)
    old, refill = await resume_reply(client, before.epoch, 10)

    with sqlite3.connect(server.state_dir / "alphaflow-state.sqlite3") as db:
        kept = db.execute("SELECT count(*) FROM events WHERE user_id = 'alice'").fetchone()[0]
        checkpoint = db.execute("SELECT seq FROM checkpoints WHERE user_id = 'alice'").fetchone()
    assert state_files
    assert checkpoint is not None and kept < after.seq / 2, f"{kept} of {after.seq} events kept"
    assert (after.epoch, after.seq) == (before.epoch, before.seq)
    assert same_portfolio(state_of(after), state_of(before))
    assert [f.id for f in after.fills] == [f.id for f in before.fills]
    assert recent.recovered is True, "a resume inside the replay buffer is served after the restart"
    assert isinstance(replay, Batch) and (replay.from_seq, replay.to_seq) == (last[-1] - 100, after.seq)
    assert old.recovered is False, "a resume from before the buffer gets a snapshot"
    assert isinstance(refill, Snapshot) and refill.seq == after.seq


async def resume_reply(client: StreamClient, epoch: str, seq: int) -> tuple[Subscribed, Batch | Snapshot]:
    """The subscribed reply to a resume, and the batch or snapshot that follows it (after the
    ``resume_unavailable`` error, when the resume point could not be served)."""
    await send(client.ws, {"type": "subscribe", "id": 9, "resume": {"epoch": epoch, "seq": seq}})
    subscribed = await recv_until(client.ws, lambda m: isinstance(m, Subscribed))
    return subscribed, await recv_until(client.ws, lambda m: isinstance(m, Batch | Snapshot))
