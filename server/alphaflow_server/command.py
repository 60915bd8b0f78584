"""``alphaflow-live serve``: flags (each also read from ``ALPHAFLOW_<FLAG>``) and start-up."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from .config import ServerConfig, default_state_dir, default_users_file


def env(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(f"ALPHAFLOW_{name}")
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"alphaflow-live: ALPHAFLOW_{name}={raw!r} is not valid") from None


def env_flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def users_file_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users-file",
        type=Path,
        default=env("USERS_FILE", None, Path),
        help=f"users and token hashes (default: $ALPHAFLOW_USERS_FILE or {default_users_file()})",
    )


def add_arguments(serve: argparse.ArgumentParser) -> None:
    def flag(name: str, help_text: str) -> None:
        env_name = name.removeprefix("--").replace("-", "_").upper()
        serve.add_argument(name, action="store_true", default=env(env_name, False, env_flag), help=help_text)

    serve.add_argument("--host", default=env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=env("PORT", 8765, int), help="0 picks a free port")
    serve.add_argument(
        "--source",
        choices=["sim", "alpaca", "none"],
        default=env("SOURCE", "sim"),
        help="where events come from besides /ws/ingest (default: the market simulator)",
    )
    users_file_argument(serve)
    serve.add_argument(
        "--state-dir",
        type=Path,
        default=env("STATE_DIR", None, Path),
        help=f"durable state (default: {default_state_dir()})",
    )
    flag("--no-state", "keep nothing across restarts")
    flag("--reset-state", "move the existing state file aside and start empty")
    serve.add_argument("--batch-window-ms", type=int, default=env("BATCH_WINDOW_MS", 250, int))
    flag("--no-leading-edge", "make every batch wait a full window (no immediate send of isolated events)")
    serve.add_argument(
        "--mark-interval-ms",
        type=int,
        default=env("MARK_INTERVAL_MS", None, int),
        help="how often price ticks re-mark the holders' positions (default: the batch window)",
    )
    serve.add_argument("--max-connections", type=int, default=env("MAX_CONNECTIONS", 100, int))
    serve.add_argument("--max-per-user", type=int, default=env("MAX_PER_USER", 5, int))
    serve.add_argument("--heartbeat-s", type=float, default=env("HEARTBEAT_S", 15.0, float))
    flag("--disable-streaming", "start with streaming off (REST snapshot only)")
    serve.add_argument(
        "--max-backlog-bytes",
        type=int,
        default=env("MAX_BACKLOG_BYTES", 4 * 1024 * 1024, int),
        help="per-connection queued bytes before a slow client is resynchronised",
    )
    serve.add_argument(
        "--slow-client-timeout-s",
        type=float,
        default=env("SLOW_CLIENT_TIMEOUT_S", 30.0, float),
        help="how long a slow client's socket may take to drain before close 1013",
    )
    flag("--no-compression", "do not offer permessage-deflate")
    serve.add_argument(
        "--retain-events",
        type=int,
        default=env("RETAIN_EVENTS", 10_000, int),
        help="replay buffer per user: at least this many events ...",
    )
    serve.add_argument(
        "--retain-seconds",
        type=float,
        default=env("RETAIN_SECONDS", 300.0, float),
        help="... or this many seconds of them, whichever is more",
    )
    sim = serve.add_argument_group("simulator (--source sim)")
    sim.add_argument("--seed", type=int, default=env("SEED", 7, int), help="same seed, same market")
    sim.add_argument(
        "--sim-users",
        type=int,
        default=env("SIM_USERS", 1, int),
        help="portfolios to simulate: 'demo' and sim-0001 … (for load)",
    )
    sim.add_argument(
        "--sim-tick-rate",
        type=float,
        default=env("SIM_TICK_RATE", 40.0, float),
        help="price ticks per second over the whole universe",
    )
    sim.add_argument(
        "--sim-order-rate",
        type=float,
        default=env("SIM_ORDER_RATE", 0.3, float),
        help="new orders per second per user",
    )
    sim.add_argument(
        "--sim-speed",
        type=float,
        default=env("SIM_SPEED", 60.0, float),
        help="how many times faster than the clock prices move",
    )
    alpaca = serve.add_argument_group(
        "Alpaca (--source alpaca; keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY, never from flags)"
    )
    alpaca.add_argument(
        "--alpaca-user",
        default=env("ALPACA_USER", None),
        help="the AlphaFlow user whose portfolio the Alpaca account is",
    )
    alpaca.add_argument(
        "--alpaca-accounts",
        type=Path,
        default=env("ALPACA_ACCOUNTS", None, Path),
        help="TOML file of [[account]] user / key_env / secret_env / paper, for several users",
    )
    flag("--alpaca-live", "trade the live account (default: paper)")
    alpaca.add_argument("--alpaca-feed", choices=["iex", "sip"], default=env("ALPACA_FEED", "iex"))
    alpaca.add_argument(
        "--alpaca-reconcile-s",
        type=float,
        default=env("ALPACA_RECONCILE_S", 60.0, float),
        help="how often to reconcile with the broker's REST state",
    )
    for name, what in (
        ("trading", "REST"),
        ("stream", "trade updates stream"),
        ("data", "market data stream"),
    ):
        alpaca.add_argument(
            f"--alpaca-{name}-url",
            default=env(f"ALPACA_{name.upper()}_URL", None),
            help=f"override the {what} URL (tests, proxies)",
        )
    serve.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))


def run(args: argparse.Namespace) -> int:
    from .app import StreamServer
    from .auth import UsersFileError, UsersFileWatcher
    from .logs import configure_logging
    from .store import StateError, open_store

    configure_logging(args.log_level)
    users_file: Path = args.users_file or default_users_file()
    config = ServerConfig(
        host=args.host,
        port=args.port,
        source=args.source,
        users_file=users_file,
        batch_window_ms=args.batch_window_ms,
        leading_edge=not args.no_leading_edge,
        mark_interval_ms=args.mark_interval_ms,
        max_connections=args.max_connections,
        max_per_user=args.max_per_user,
        heartbeat_s=args.heartbeat_s,
        disable_streaming=args.disable_streaming,
        max_backlog_bytes=args.max_backlog_bytes,
        slow_client_timeout_s=args.slow_client_timeout_s,
        compression=not args.no_compression,
        retain_events=args.retain_events,
        retain_seconds=args.retain_seconds,
    )
    demo_token: str | None = None
    try:
        if args.source == "sim":
            demo_token = ensure_demo_user(users_file)
        watcher = UsersFileWatcher(users_file)
        store = open_store(
            None if args.no_state else (args.state_dir or default_state_dir()), reset=args.reset_state
        )
    except (UsersFileError, StateError) as exc:
        print(f"alphaflow-live serve: {exc}", file=sys.stderr)
        return 2
    if len(watcher.store) == 0:
        print(
            f"alphaflow-live serve: no users in {users_file}; create one with "
            f"'alphaflow-live users add NAME --users-file {users_file}'",
            file=sys.stderr,
        )
    server = StreamServer(config, watcher, store)
    if args.source == "sim":
        server.add_source("sim", simulator_source(args))
    elif args.source == "alpaca":
        try:
            server.add_source("alpaca", alpaca_source_from(args))
        except ValueError as exc:
            print(f"alphaflow-live serve: {exc}", file=sys.stderr)
            return 2

    def ready(server: StreamServer) -> None:
        url = f"ws://{config.host}:{server.port}/ws/portfolio"
        if args.source == "sim":
            token = (
                demo_token or "<the demo token, shown when it was created; 'users rotate demo' for a new one>"
            )
            print(
                f"simulated market running; connect as the demo user with:\n"
                f"  export ALPHAFLOW_URL={url}\n  export ALPHAFLOW_TOKEN={token}",
                flush=True,
            )
        else:
            print(f"connect with ALPHAFLOW_URL={url} and a user token (alphaflow-live users add)", flush=True)

    try:
        asyncio.run(server.run_until_signalled(on_ready=ready))
    except OSError as exc:
        print(
            f"alphaflow-live serve: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    return 0


def demo_token_file(users_file: Path) -> Path:
    return users_file.parent / "demo.token"


def ensure_demo_user(users_file: Path) -> str | None:
    """Create the simulator's ``demo`` user if missing; its token, when it can be known.

    Only a hash is stored in the users file, so the token is kept (mode 0600)
    in ``demo.token`` beside it, for ``make demo`` and the notebooks to find.
    """
    from .auth import load_users_file, save_users_file

    token_file = demo_token_file(users_file)
    store = load_users_file(users_file)
    if store.get("demo") is None:
        token = store.add("demo", "user")
        save_users_file(users_file, store)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        return token
    if token_file.exists():
        token = token_file.read_text().strip()
        if (principal := store.authenticate(token)) is not None and principal.name == "demo":
            return token
    return None


def alpaca_source_from(args: argparse.Namespace) -> Callable[[Any], Any]:
    from .sources.alpaca import (
        AlpacaAccount,
        AlpacaConfigError,
        AlpacaOptions,
        alpaca_source,
        credentials,
        load_accounts,
    )

    if args.alpaca_accounts:
        accounts = load_accounts(args.alpaca_accounts)
    elif args.alpaca_user:
        accounts = [AlpacaAccount(user_id=args.alpaca_user, paper=not args.alpaca_live)]
    else:
        raise AlpacaConfigError("--source alpaca needs --alpaca-user NAME (or --alpaca-accounts FILE)")
    for account in accounts:
        credentials(account)  # fail at start, with the variable to set, rather than in the background
    options = AlpacaOptions(
        feed=args.alpaca_feed,
        trading_url=args.alpaca_trading_url,
        stream_url=args.alpaca_stream_url,
        data_url=args.alpaca_data_url,
        reconcile_s=args.alpaca_reconcile_s,
    )
    return alpaca_source(accounts, options)


def simulator_source(args: argparse.Namespace) -> Callable[[Any], Any]:
    from .sources.sim import MarketSimulator, SimConfig, run_simulator

    users = ("demo", *(f"sim-{i:04d}" for i in range(1, max(1, args.sim_users))))
    config = SimConfig(
        seed=args.seed,
        users=users,
        tick_rate=args.sim_tick_rate,
        order_rate=args.sim_order_rate,
        speed=args.sim_speed,
        initial_cash=Decimal("100000"),
    )

    async def run_source(server: Any) -> None:
        simulator = MarketSimulator(config, start_time=time.time())
        await run_simulator(simulator, server.ingest_local, clock=time.time)

    return run_source
