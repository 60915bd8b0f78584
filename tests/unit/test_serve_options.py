"""`alphaflow-live serve`'s flags are the config dataclasses' fields, with their defaults."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest

from alphaflow_server.command import add_arguments, flag_of, options_from
from alphaflow_server.config import (
    AlpacaFlags,
    ClusterFlags,
    ServeOptions,
    ServerConfig,
    SimulatorOptions,
    default_state_dir,
    default_users_file,
)

OPTION_CLASSES = [ServerConfig, ServeOptions, ClusterFlags, SimulatorOptions, AlpacaFlags]

# What `serve --help` listed before its flags were made from the dataclasses; scripts use them.
FLAGS_SCRIPTS_USE = (
    "--host", "--port", "--source", "--users-file", "--state-dir", "--no-state", "--reset-state",
    "--batch-window-ms", "--no-leading-edge", "--mark-interval-ms", "--max-connections", "--max-per-user",
    "--heartbeat-s", "--disable-streaming", "--max-backlog-bytes", "--slow-client-timeout-s",
    "--no-compression", "--retain-events", "--retain-seconds", "--seed", "--sim-users", "--sim-tick-rate",
    "--sim-order-rate", "--sim-speed", "--alpaca-user", "--alpaca-accounts", "--alpaca-live",
    "--alpaca-feed", "--alpaca-reconcile-s", "--alpaca-trading-url", "--alpaca-stream-url",
    "--alpaca-data-url", "--log-level",
)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_alphaflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("ALPHAFLOW_")]:
        monkeypatch.delenv(name)


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve")
    add_arguments(parser)
    return parser


def flags_by_dest(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    flags: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.dest != "help":
            flags.setdefault(action.dest, []).extend(action.option_strings)
    return flags


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda cls: cls.__name__)
def test_every_field_has_exactly_one_flag(cls: type) -> None:
    flags = flags_by_dest(serve_parser())

    for f in dataclasses.fields(cls):
        assert flags.get(f.name) == [flag_of(f)], f"{cls.__name__}.{f.name}: got flags {flags.get(f.name)}"


def test_serve_has_no_flag_without_a_field() -> None:
    fields = {f.name for cls in OPTION_CLASSES for f in dataclasses.fields(cls)}

    assert set(flags_by_dest(serve_parser())) == fields


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda cls: cls.__name__)
def test_parsed_defaults_equal_the_dataclass_defaults(cls: type) -> None:
    assert options_from(cls, serve_parser().parse_args([])) == cls()


def test_defaults_are_the_simulator_on_the_default_address_with_platform_files() -> None:
    config = options_from(ServerConfig, serve_parser().parse_args([]))
    serve = options_from(ServeOptions, serve_parser().parse_args([]))

    assert (config.host, config.port, config.source) == ("127.0.0.1", 8765, "sim")
    assert config.users_file == default_users_file()
    assert (serve.state_dir, serve.no_state, serve.reset_state) == (default_state_dir(), False, False)


def test_serve_keeps_every_flag_scripts_use() -> None:
    listed = {flag for action in serve_parser()._actions for flag in action.option_strings}

    assert sorted(set(FLAGS_SCRIPTS_USE) - listed) == []


def test_negated_switches_turn_a_true_default_off() -> None:
    config = options_from(ServerConfig, serve_parser().parse_args(["--no-leading-edge", "--no-compression"]))

    assert (config.leading_edge, config.compression) == (False, False)


def test_environment_variables_named_after_the_flag_set_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAFLOW_NO_LEADING_EDGE", "1")
    monkeypatch.setenv("ALPHAFLOW_DISABLE_STREAMING", "yes")
    monkeypatch.setenv("ALPHAFLOW_MARK_INTERVAL_MS", "40")
    monkeypatch.setenv("ALPHAFLOW_USERS_FILE", "/tmp/elsewhere/users.json")
    monkeypatch.setenv("ALPHAFLOW_SIM_SPEED", "2.5")
    monkeypatch.setenv("ALPHAFLOW_ALPACA_LIVE", "true")

    args = serve_parser().parse_args([])

    config = options_from(ServerConfig, args)
    assert (config.leading_edge, config.disable_streaming, config.mark_interval_ms) == (False, True, 40)
    assert config.users_file == Path("/tmp/elsewhere/users.json")
    assert options_from(SimulatorOptions, args).sim_speed == 2.5
    assert options_from(AlpacaFlags, args).alpaca_live is True


def test_a_flag_wins_over_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAFLOW_PORT", "9000")

    assert options_from(ServerConfig, serve_parser().parse_args(["--port", "0"])).port == 0


def test_an_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAFLOW_MAX_PER_USER", "many")

    with pytest.raises(SystemExit, match="ALPHAFLOW_MAX_PER_USER='many' is not valid"):
        serve_parser()
