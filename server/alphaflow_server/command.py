"""``alphaflow-live serve``: flags made from the config dataclasses, and start-up.

Every field of ``ServerConfig``, ``ServeOptions``, ``SimulatorOptions`` and
``AlpacaFlags`` is one flag, ``--field-name`` (``--no-field-name`` for a
negated switch). Its default is ``ALPHAFLOW_<FLAG>`` when that is set
(``--no-compression``: ``ALPHAFLOW_NO_COMPRESSION=1``), else the field's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alphaflow_live.codes import PORTFOLIO_PATH

from .app import StreamServer
from .auth import UsersFileError, UsersFileWatcher, load_users_file, save_users_file
from .config import AlpacaFlags, ClusterFlags, ServeOptions, ServerConfig, SimulatorOptions, option_of
from .logs import configure_logging
from .sources import Source
from .sqlite_store import open_store
from .statedir import StateDirLock
from .store import StateError, StateStore

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Options = TypeVar("Options", bound="DataclassInstance")


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


def flag_of(f: dataclasses.Field[Any]) -> str:
    name = f.name.replace("_", "-")
    return f"--no-{name}" if option_of(f).negated else f"--{name}"


def _value_type(hint: Any) -> Callable[[str], Any]:
    """``int`` for ``int`` and ``int | None``: what a flag's text is parsed with."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if not callable(hint):
        raise TypeError(f"no flag for a field of type {hint!r}")
    return typing.cast(Callable[[str], Any], hint)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def add_option(parser: argparse._ActionsContainer, f: dataclasses.Field[Any], hint: Any) -> None:
    spec = option_of(f)
    flag = flag_of(f)
    env_name = flag.removeprefix("--").replace("-", "_").upper()
    default = _default_of(f)
    help_text = None if spec.help is None else spec.help.format(default=default)
    kind = _value_type(hint)
    if kind is bool:
        # A switch can only move a value away from its default: False unless negated.
        if default is not spec.negated:
            raise TypeError(f"{f.name}: a bool defaulting to {default} needs negated={not spec.negated}")
        switched = env(env_name, False, env_flag)
        parser.add_argument(
            flag,
            dest=f.name,
            action="store_false" if spec.negated else "store_true",
            default=not switched if spec.negated else switched,
            help=help_text,
        )
        return
    parser.add_argument(
        flag,
        dest=f.name,
        type=kind,
        choices=spec.choices or None,
        default=env(env_name, default, kind),
        help=help_text,
    )


def add_options(parser: argparse._ActionsContainer, cls: type[DataclassInstance]) -> None:
    """One flag per field of the dataclass ``cls``, in field order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        add_option(parser, f, hints[f.name])


def options_from(cls: type[Options], args: argparse.Namespace) -> Options:
    """The dataclass ``cls`` from the values its flags parsed into ``args``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def users_file_argument(parser: argparse.ArgumentParser) -> None:
    (users_file,) = [f for f in dataclasses.fields(ServerConfig) if f.name == "users_file"]
    add_option(parser, users_file, typing.get_type_hints(ServerConfig)["users_file"])


def add_arguments(serve: argparse.ArgumentParser) -> None:
    add_options(serve, ServerConfig)
    add_options(serve, ServeOptions)
    add_options(serve.add_argument_group("cluster (--redis: many nodes over Redis)"), ClusterFlags)
    add_options(serve.add_argument_group("simulator (--source sim)"), SimulatorOptions)
    add_options(
        serve.add_argument_group(
            "Alpaca (--source alpaca; keys from APCA_API_KEY_ID / APCA_API_SECRET_KEY, never from flags)"
        ),
        AlpacaFlags,
    )


def run(args: argparse.Namespace) -> int:
    config = options_from(ServerConfig, args)
    serve = options_from(ServeOptions, args)
    configure_logging(serve.log_level)
    cluster = options_from(ClusterFlags, args)
    if cluster.redis:
        return run_cluster_node(args, config, cluster)
    demo_token: str | None = None
    source: Source | None = None
    try:
        if config.source == "sim":
            demo_token = ensure_demo_user(config.users_file)
            source = simulator_source(args)
        elif config.source == "alpaca":
            source = alpaca_source_from(args)
        watcher = UsersFileWatcher(config.users_file)
        # Taken before anything in the state dir is read; it is this process's until it exits.
        lock = None if serve.no_state else StateDirLock(serve.state_dir)
    except (UsersFileError, StateError, ValueError) as exc:
        print(f"alphaflow-live serve: {exc}", file=sys.stderr)
        return 2
    if len(watcher.store) == 0:
        print(
            f"alphaflow-live serve: no users in {config.users_file}; create one with "
            f"'alphaflow-live users add NAME --users-file {config.users_file}'",
            file=sys.stderr,
        )

    def open_state() -> StateStore:
        return open_store(serve.state_dir, reset=serve.reset_state)

    server = StreamServer(config, watcher, open_state=None if lock is None else open_state)
    if source is not None:
        server.add_source(config.source, source)

    def ready(server: StreamServer) -> None:
        if lock is not None:
            lock.record_holder()  # only now: a start that fails leaves the lock file as it was
        url = f"ws://{config.host}:{server.port}{PORTFOLIO_PATH}"
        if config.source == "sim":
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
        return serve_until_signalled(server, config, ready)
    finally:
        if lock is not None:
            lock.release()


def run_cluster_node(args: argparse.Namespace, config: ServerConfig, cluster: ClusterFlags) -> int:
    """``serve --redis``: users, streams and books are the cluster's; no local state is kept."""
    from .cluster.connect import open_sync_client
    from .cluster.redis_log import Unavailable
    from .cluster.users import RedisUserStore

    source: Source | None = None
    demo_token: str | None = None
    try:
        if cluster.partitions < 1 or cluster.lease_s <= 0:
            raise ValueError("--partitions must be at least 1 and --lease-s positive")
        if config.source == "sim":
            source = simulator_source(args)
            users = RedisUserStore(open_sync_client(cluster.redis or ""))
            if users.load().get("demo") is None:
                with contextlib.suppress(ValueError):  # another node made it meanwhile
                    demo_token = users.add("demo", "user")
        elif config.source == "alpaca":
            source = alpaca_source_from(args)
    except (ValueError, Unavailable) as exc:
        print(f"alphaflow-live serve: {exc}", file=sys.stderr)
        return 2
    server = StreamServer(config, UsersFileWatcher(config.users_file), cluster=cluster)
    if source is not None:
        server.add_source(config.source, source)

    def ready(server: StreamServer) -> None:
        url = f"ws://{config.host}:{server.port}{PORTFOLIO_PATH}"
        print(f"node {cluster.node_id} joined the cluster; connect with ALPHAFLOW_URL={url}", flush=True)
        if demo_token is not None:
            print(f"  the demo user's token (shown once): {demo_token}", flush=True)

    return serve_until_signalled(server, config, ready)


def serve_until_signalled(
    server: StreamServer, config: ServerConfig, ready: Callable[[StreamServer], None]
) -> int:
    """Run the server until SIGTERM or SIGINT; the exit code, with one line saying why it failed."""
    try:
        asyncio.run(server.run_until_signalled(on_ready=ready))
    except StateError as exc:
        print(f"alphaflow-live serve: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"alphaflow-live serve: cannot listen on {config.host}:{config.port}: {exc.strerror}",
            file=sys.stderr,
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


def alpaca_source_from(args: argparse.Namespace) -> Source:
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


def simulator_source(args: argparse.Namespace) -> Source:
    from .sources.sim import SimConfig
    from .sources.sim import simulator_source as sim_source

    users = ("demo", *(f"sim-{i:04d}" for i in range(1, max(1, args.sim_users))))
    config = SimConfig(
        seed=args.seed,
        users=users,
        tick_rate=args.sim_tick_rate,
        order_rate=args.sim_order_rate,
        speed=args.sim_speed,
        initial_cash=Decimal("100000"),
    )
    return sim_source(config)
