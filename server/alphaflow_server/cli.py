"""The ``alphaflow-live`` command: serve, users, admin and schema."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect

from alphaflow_live.codes import ADMIN_PATH, DEFAULT_URL
from alphaflow_live.protocol import (
    Ack,
    Error,
    GetStats,
    SetStreaming,
    Stats,
    admin_reply_decoder,
    encode,
    json_schema,
)

from . import command
from .auth import Role, TokenStore, UsersFileError, load_users_file, save_users_file

# The modules pyproject's [server] extra installs: serve needs them, the other commands do not.
SERVER_EXTRA_MODULES = ("prometheus_client",)
SERVER_EXTRA_INSTALL = "pip install 'alphaflow-live[server]'"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alphaflow-live", description="AlphaFlow Live: live portfolios in Jupyter."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the stream server")
    command.add_arguments(serve)

    users = commands.add_parser("users", help="manage users and their tokens")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = user_commands.add_parser("add", help="create a user and print its token (shown once)")
    add.add_argument("name")
    add.add_argument("--role", choices=["user", "service", "admin"], default="user")
    listing = user_commands.add_parser("list", help="list users and roles")
    remove = user_commands.add_parser("remove", help="delete a user (its token stops working)")
    remove.add_argument("name")
    rotate = user_commands.add_parser("rotate", help="replace a user's token and print the new one")
    rotate.add_argument("name")
    for sub in (add, listing, remove, rotate):
        command.users_file_argument(sub)
        _users_redis_argument(sub)

    admin = commands.add_parser("admin", help="operate a running server (token from ALPHAFLOW_ADMIN_TOKEN)")
    admin_commands = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    streaming = admin_commands.add_parser("streaming", help="switch streaming off or on at run time")
    streaming.add_argument("state", choices=["off", "on"])
    stats = admin_commands.add_parser("stats", help="print the server's connection and delivery stats")
    for sub in (streaming, stats):
        sub.add_argument("--url", default=None, help="server URL (default: the host of $ALPHAFLOW_URL)")

    commands.add_parser("schema", help="print the JSON Schema of the wire protocol")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = {
        "serve": _serve,
        "users": _users,
        "admin": _admin,
        "schema": _schema,
    }[args.command]
    return handler(args)


def missing_server_modules() -> list[str]:
    return [name for name in SERVER_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def _serve(args: argparse.Namespace) -> int:
    # Said before anything starts: without the extra the server would run until its first /metrics scrape.
    if missing := missing_server_modules():
        print(
            f"alphaflow-live serve: the stream server needs its extra dependencies "
            f"(missing: {', '.join(missing)}); install them with: {SERVER_EXTRA_INSTALL}",
            file=sys.stderr,
        )
        return 2
    return command.run(args)


def _users_redis_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--redis",
        default=os.environ.get("ALPHAFLOW_REDIS") or None,
        metavar="URL",
        help="manage the users of the cluster of nodes sharing this Redis or Redis Cluster instead of "
        "the users file (redis://, rediss:// or unix:// URL; default: $ALPHAFLOW_REDIS)",
    )


class _Users(Protocol):
    """What the users commands do to a set of users: the users file's, or (``RedisUserStore``) the
    cluster's."""

    def load(self) -> TokenStore: ...
    def add(self, name: str, role: Role) -> str: ...
    def rotate(self, name: str) -> str: ...
    def remove(self, name: str) -> None: ...


class _UsersFile:
    """The users file behind ``_Users``: each change is saved at once, and only a change that
    succeeded is saved."""

    def __init__(self, path: Path, store: TokenStore) -> None:
        self._path = path
        self._store = store

    def load(self) -> TokenStore:
        return self._store

    def add(self, name: str, role: Role) -> str:
        token = self._store.add(name, role)
        save_users_file(self._path, self._store)
        return token

    def rotate(self, name: str) -> str:
        token = self._store.rotate(name)
        save_users_file(self._path, self._store)
        return token

    def remove(self, name: str) -> None:
        self._store.remove(name)
        save_users_file(self._path, self._store)


def _users(args: argparse.Namespace) -> int:
    if args.redis:
        return _users_in_redis(args, args.redis)
    path: Path = args.users_file
    try:
        store = load_users_file(path)
    except UsersFileError as exc:
        print(f"alphaflow-live users: {exc}", file=sys.stderr)
        return 2
    return _change_users(args, _UsersFile(path, store), str(path))


def _change_users(args: argparse.Namespace, users: _Users, where: str) -> int:
    """List, add, rotate or remove, saying what was done to the users ``where`` names."""
    try:
        if args.users_command == "list":
            store = users.load()
            if not len(store):
                print(f"no users in {where}")
            for record in store.records():
                print(f"{record.name}\t{record.role}\tcreated {record.created_at}")
            return 0
        if args.users_command == "add":
            token = users.add(args.name, args.role)
            action = f"created {args.role} '{args.name}'"
        elif args.users_command == "rotate":
            token = users.rotate(args.name)
            action = f"new token for '{args.name}'"
        else:
            users.remove(args.name)
            print(f"removed '{args.name}' from {where}")
            return 0
    except (ValueError, KeyError) as exc:
        print(f"alphaflow-live users: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"{action} in {where}")
    print(f"token (shown once; only its hash is stored): {token}")
    return 0


def _users_in_redis(args: argparse.Namespace, url: str) -> int:
    """``_users`` on the cluster's users in Redis: the same lines, naming the cluster for the path."""
    try:
        from .cluster.connect import open_sync_client, redacted
        from .cluster.redis_log import Unavailable
        from .cluster.users import InvalidUsers, RedisUserStore
    except ImportError as exc:
        print(
            f"alphaflow-live users: --redis needs redis-py ({exc}); "
            "install it with: pip install 'alphaflow-live[redis]'",
            file=sys.stderr,
        )
        return 2
    where = f"the cluster at {redacted(url)}"
    try:
        client = open_sync_client(url)
    except (Unavailable, ValueError) as exc:
        print(f"alphaflow-live users: {exc}", file=sys.stderr)
        return 2
    try:
        return _change_users(args, RedisUserStore(client), where)
    except (Unavailable, InvalidUsers) as exc:
        print(f"alphaflow-live users: {where}: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()


def admin_url(explicit: str | None) -> str:
    """The admin stream's URL on the host of ``--url`` or ``$ALPHAFLOW_URL``."""
    base = explicit or os.environ.get("ALPHAFLOW_URL") or DEFAULT_URL
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme or "ws")
    return urlunsplit((scheme, parts.netloc, ADMIN_PATH, "", ""))


def _admin(args: argparse.Namespace) -> int:
    token = os.environ.get("ALPHAFLOW_ADMIN_TOKEN")
    if not token:
        print(
            "alphaflow-live admin: set ALPHAFLOW_ADMIN_TOKEN to an admin token "
            "(alphaflow-live users add NAME --role admin)",
            file=sys.stderr,
        )
        return 2
    url = admin_url(args.url)
    request = (
        SetStreaming(id=1, enabled=args.state == "on")
        if args.admin_command == "streaming"
        else GetStats(id=1)
    )
    try:
        with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10) as ws:
            ws.send(encode(request), text=True)
            reply = admin_reply_decoder.decode(ws.recv(timeout=10))
    except InvalidStatus as exc:
        print(
            f"alphaflow-live admin: {url} refused: HTTP {exc.response.status_code} "
            f"{_error_text(bytes(exc.response.body or b''))}",
            file=sys.stderr,
        )
        return 1
    except (OSError, TimeoutError, WebSocketException) as exc:
        print(f"alphaflow-live admin: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    if isinstance(reply, Error):
        print(f"alphaflow-live admin: {reply.code}: {reply.message}", file=sys.stderr)
        return 1
    if isinstance(reply, Stats):
        print(msgspec.json.format(encode(reply), indent=2).decode())
    elif isinstance(reply, Ack):
        print(f"streaming {args.state}")
    return 0


def _error_text(body: bytes | None) -> str:
    try:
        parsed = json.loads(body or b"")
        return f"{parsed.get('error')}: {parsed.get('message', '')}"
    except (ValueError, AttributeError):
        return (body or b"").decode(errors="replace")[:200]


def _schema(args: argparse.Namespace) -> int:
    json.dump(json_schema(), sys.stdout, indent=2)
    print()
    return 0
