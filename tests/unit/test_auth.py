"""TokenStore, token hashing, the users file and its watcher."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import msgspec
import pytest

from alphaflow_live.protocol import TIMESTAMP_PATTERN
from alphaflow_server.auth import (
    TOKEN_PREFIX,
    Principal,
    TokenStore,
    UserRecord,
    UsersFile,
    UsersFileError,
    UsersFileWatcher,
    hash_token,
    load_users_file,
    new_token,
    save_users_file,
)

SHA256_OF_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def store_with(*users: tuple[str, str]) -> tuple[TokenStore, dict[str, str]]:
    store = TokenStore()
    tokens = {name: store.add(name, role) for name, role in users}  # type: ignore[arg-type]
    return store, tokens


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Move the file's mtime on, so a change is visible whatever the filesystem's resolution."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


# ---------------------------------------------------------------------- tokens


def test_hash_token_is_hex_sha256() -> None:
    assert hash_token("abc") == SHA256_OF_ABC


def test_new_tokens_have_the_prefix_and_256_bits() -> None:
    token = new_token()

    assert token.startswith(TOKEN_PREFIX)
    assert len(token) == len(TOKEN_PREFIX) + 43, f"expected 43 url-safe characters, got {token!r}"


def test_new_tokens_are_unique() -> None:
    assert len({new_token() for _ in range(200)}) == 200


# ------------------------------------------------------------------ TokenStore


def test_added_user_authenticates_with_its_token_and_role() -> None:
    store, tokens = store_with(("alice", "user"), ("ingest", "service"), ("ops", "admin"))

    got = [store.authenticate(tokens[name]) for name in ("alice", "ingest", "ops")]

    assert got == [Principal("alice", "user"), Principal("ingest", "service"), Principal("ops", "admin")]


def test_unknown_token_does_not_authenticate() -> None:
    store, _ = store_with(("alice", "user"))

    assert store.authenticate("afl_not-a-token") is None
    assert store.authenticate("") is None


def test_store_keeps_only_the_hash_of_a_token() -> None:
    store, tokens = store_with(("alice", "user"))

    record = store.get("alice")

    assert record is not None
    assert record.token_sha256 == hash_token(tokens["alice"])
    assert tokens["alice"] not in msgspec.json.encode(record).decode()


def test_add_records_a_protocol_timestamp() -> None:
    store, _ = store_with(("alice", "user"))

    record = store.get("alice")

    assert record is not None
    assert re.fullmatch(TIMESTAMP_PATTERN, record.created_at), f"bad timestamp {record.created_at!r}"


def test_add_accepts_an_explicit_token() -> None:
    store = TokenStore()

    token = store.add("alice", "user", token="afl_fixed")

    assert token == "afl_fixed"
    assert store.authenticate("afl_fixed") == Principal("alice", "user")


@pytest.mark.parametrize("name", ["", "al ice", "a" * 65, "alice/bob", "ålice"])
def test_add_refuses_an_invalid_name(name: str) -> None:
    with pytest.raises(ValueError, match="invalid user name"):
        TokenStore().add(name, "user")


def test_add_refuses_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="invalid role"):
        TokenStore().add("alice", "root")  # type: ignore[arg-type]


def test_add_refuses_an_existing_name() -> None:
    store, _ = store_with(("alice", "user"))

    with pytest.raises(ValueError, match="exists"):
        store.add("alice", "admin")


def test_removed_user_no_longer_authenticates() -> None:
    store, tokens = store_with(("alice", "user"), ("bob", "user"))

    store.remove("alice")

    assert store.authenticate(tokens["alice"]) is None
    assert store.authenticate(tokens["bob"]) == Principal("bob", "user")
    assert len(store) == 1


def test_remove_of_an_unknown_user_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no user"):
        TokenStore().remove("alice")


def test_rotate_issues_a_new_token_and_revokes_the_old_one_keeping_the_role() -> None:
    store, tokens = store_with(("ops", "admin"))

    new = store.rotate("ops")

    assert new != tokens["ops"]
    assert store.authenticate(tokens["ops"]) is None
    assert store.authenticate(new) == Principal("ops", "admin")


def test_rotate_of_an_unknown_user_raises_key_error() -> None:
    with pytest.raises(KeyError, match="no user"):
        TokenStore().rotate("alice")


def test_records_are_sorted_by_name() -> None:
    store, _ = store_with(("carol", "user"), ("alice", "user"), ("bob", "admin"))

    assert [r.name for r in store.records()] == ["alice", "bob", "carol"]


def test_a_user_listed_twice_is_refused_rather_than_left_half_revocable(tmp_path: Path) -> None:
    first = UserRecord(name="alice", role="user", token_sha256=hash_token("t1"), created_at="x")
    second = UserRecord(name="alice", role="user", token_sha256=hash_token("t2"), created_at="x")
    path = tmp_path / "users.json"
    path.write_bytes(msgspec.json.encode(UsersFile(users=[first, second])))

    with pytest.raises(ValueError, match="appears twice"):
        TokenStore([first, second])
    with pytest.raises(UsersFileError, match="appears twice"):
        load_users_file(path)


# ------------------------------------------------------------------- users file


def test_users_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store, tokens = store_with(("alice", "user"), ("ingest", "service"))

    save_users_file(path, store)
    loaded = load_users_file(path)

    assert loaded.records() == store.records()
    assert loaded.authenticate(tokens["ingest"]) == Principal("ingest", "service")


def test_users_file_is_written_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "users.json"

    save_users_file(path, store_with(("alice", "user"))[0])

    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"expected mode 0o600, got {oct(mode)}"


def test_users_file_never_contains_a_token(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store, tokens = store_with(("alice", "user"))

    save_users_file(path, store)

    assert tokens["alice"] not in path.read_text()


def test_save_replaces_an_existing_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users_file(path, store_with(("alice", "user"))[0])

    save_users_file(path, store_with(("bob", "user"))[0])

    assert [r.name for r in load_users_file(path).records()] == ["bob"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_creates_missing_parent_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "users.json"

    save_users_file(path, TokenStore())

    assert len(load_users_file(path)) == 0


def test_absent_users_file_is_an_empty_store(tmp_path: Path) -> None:
    assert len(load_users_file(tmp_path / "missing.json")) == 0


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"users": [{"name": "alice"}]}', b'{"users": [{"name": "a", "role": "root", '
     b'"token_sha256": "x", "created_at": "y"}]}'],
)  # fmt: skip
def test_invalid_users_file_raises_users_file_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "users.json"
    path.write_bytes(content)

    with pytest.raises(UsersFileError, match="is not valid"):
        load_users_file(path)


def test_unreadable_users_file_raises_users_file_error(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="cannot read"):
        load_users_file(tmp_path)  # a directory


# ---------------------------------------------------------------- the watcher


def test_watcher_serves_the_file_it_was_started_with(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store, tokens = store_with(("alice", "user"))
    save_users_file(path, store)

    watcher = UsersFileWatcher(path)

    assert watcher.current(0.0).authenticate(tokens["alice"]) == Principal("alice", "user")


def test_watcher_reloads_when_the_mtime_changes(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users_file(path, store_with(("alice", "user"))[0])
    watcher = UsersFileWatcher(path, check_interval_s=1.0)
    watcher.current(0.0)

    store, tokens = store_with(("alice", "user"), ("bob", "user"))
    save_users_file(path, store)
    bump_mtime(path)

    assert watcher.current(1.0).authenticate(tokens["bob"]) == Principal("bob", "user")


def test_watcher_checks_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users_file(path, TokenStore())
    watcher = UsersFileWatcher(path, check_interval_s=1.0)
    watcher.current(10.0)

    store, tokens = store_with(("bob", "user"))
    save_users_file(path, store)
    bump_mtime(path)

    assert watcher.current(10.5).authenticate(tokens["bob"]) is None
    assert watcher.current(11.0).authenticate(tokens["bob"]) == Principal("bob", "user")


def test_watcher_does_not_reload_an_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users_file(path, store_with(("alice", "user"))[0])
    watcher = UsersFileWatcher(path)
    first = watcher.current(0.0)

    assert watcher.current(5.0) is first


def test_watcher_picks_up_a_file_created_after_start(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    watcher = UsersFileWatcher(path)
    assert len(watcher.current(0.0)) == 0

    store, tokens = store_with(("alice", "user"))
    save_users_file(path, store)

    assert watcher.current(1.0).authenticate(tokens["alice"]) == Principal("alice", "user")


def test_watcher_keeps_the_last_good_store_when_the_file_turns_invalid(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    store, tokens = store_with(("alice", "user"))
    save_users_file(path, store)
    watcher = UsersFileWatcher(path)

    path.write_bytes(b"{broken")
    bump_mtime(path)
    kept = watcher.current(1.0)

    assert kept.authenticate(tokens["alice"]) == Principal("alice", "user")
    assert watcher.error is not None
    assert "is not valid" in watcher.error


def test_watcher_recovers_when_the_file_is_fixed(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    save_users_file(path, TokenStore())
    watcher = UsersFileWatcher(path)
    path.write_bytes(b"{broken")
    bump_mtime(path)
    watcher.current(1.0)

    store, tokens = store_with(("bob", "user"))
    save_users_file(path, store)
    bump_mtime(path, seconds=20)

    assert watcher.current(2.0).authenticate(tokens["bob"]) == Principal("bob", "user")
    assert watcher.error is None
