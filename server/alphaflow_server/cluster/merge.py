"""One report for a cluster out of each live node's own: ``admin stats`` on any node.

Merged field by field from ``StatsReport``'s fields, so that a field added to
the report has to say how it merges (the module refuses to import until it
does) instead of being dropped: counters and per-key counters are summed,
lists joined, the worst health wins (reasons named by node), streaming is on
only if every node streams, batch efficiency is recomputed from the summed
parts, and latency percentiles are each node's highest (an upper bound:
percentiles cannot be merged exactly without the histograms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import msgspec

from alphaflow_live.protocol import LatencySummary, StatsReport

from ..stats import ServerStats

_Pairs = list[tuple[str, Any]]
_Rule = Callable[[_Pairs, Mapping[str, Mapping[str, Any]]], Any]
_HEALTH_ORDER: Final = ("healthy", "degraded", "offline")


def merge_reports(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The cluster's ``StatsReport`` (builtins form) from each node's, by node id.

    Field by field from the Struct, so a field added there is merged by its
    type, or refused at import when no rule fits (never silently dropped):

    - numbers (counters, gauges, memory) are summed; a dict of numbers
      (connections per user or stream, refusals, disconnects by code) is
      summed key by key; lists are joined in node order;
    - ``batch_efficiency`` is recomputed from the summed ``events_delivered``
      and ``batches_out`` (ServerStats's formula), or else the nodes' values
      weighted by their events delivered;
    - ``latency_ms``: counts summed, and each percentile the max across nodes.
      Percentiles cannot be merged exactly from summaries; the cluster's true
      one lies between the nodes' lowest and highest, so this is an upper bound;
    - ``health`` is the worst status (an unknown one counts as worst),
      ``health_reasons`` every node's, each prefixed ``<node id>: ``;
      ``streaming_enabled`` only if every node streams; ``uptime_s`` the
      oldest node's; any other text is kept if all agree, else each node's;
    - ``node_id`` and ``nodes`` are left out: the node that answers sets them
      (its own id, and these very reports).

    A field a node's report lacks (an older node) is merged over the nodes
    that have it; keys the Struct lacks (a newer node's) by their values' kind.
    """
    if not reports:
        raise ValueError("no reports to merge: not even this node's was found (is publish_stats running?)")
    nodes = sorted(reports)
    merged: dict[str, Any] = {}
    for name, rule in [*_RULES.items(), *((k, None) for k in sorted(_extra_keys(reports)))]:
        pairs = [(node, reports[node][name]) for node in nodes if name in reports[node]]
        if pairs:
            merged[name] = (rule or _rule_for_value(pairs[0][1]))(pairs, reports)
    return merged


def _extra_keys(reports: Mapping[str, Mapping[str, Any]]) -> set[str]:
    return {key for report in reports.values() for key in report} - set(_RULES) - _NOT_MERGED


def _numbers(pairs: _Pairs) -> list[Any]:
    return [value for _, value in pairs if value is not None]


def _total(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> Any:
    numbers = _numbers(pairs)
    return sum(numbers) if numbers else None


def _highest(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> Any:
    numbers = _numbers(pairs)
    return max(numbers) if numbers else None


def _total_per_key(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for _, counts in pairs:
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
    return dict(sorted(totals.items()))


def _every(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> bool:
    return all(value for _, value in pairs)


def _joined(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    return [item for _, items in pairs for item in items]


def _agreed(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> Any:
    values = [value for _, value in pairs]
    if all(value == values[0] for value in values):
        return values[0]
    return "; ".join(f"{node}: {value}" for node, value in pairs)


def _worst_health(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> str:
    def rank(status: str) -> int:
        return _HEALTH_ORDER.index(status) if status in _HEALTH_ORDER else len(_HEALTH_ORDER)

    return str(max((value for _, value in pairs), key=rank))


def _reasons_by_node(pairs: _Pairs, _reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [f"{node}: {reason}" for node, reasons in pairs for reason in reasons]


def _batch_efficiency(pairs: _Pairs, reports: Mapping[str, Mapping[str, Any]]) -> float | None:
    delivered = [report.get("events_delivered") for report in reports.values()]
    batches = [report.get("batches_out") for report in reports.values()]
    if all(isinstance(count, int) for count in (*delivered, *batches)):
        parts = ServerStats(
            0.0, events_delivered=sum(cast(list[int], delivered)), batches_out=sum(cast(list[int], batches))
        )
        return parts.batch_efficiency()
    weighted: list[tuple[float, float]] = [
        (value, reports[node].get("events_delivered") or 1) for node, value in pairs if value is not None
    ]
    if not weighted:
        return None
    return round(sum(v * w for v, w in weighted) / sum(w for _, w in weighted), 6)


def _latency(pairs: _Pairs, reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for field in _struct_fields(LatencySummary):
        # Every field but the count is a percentile or the max.
        rule = _total if field.name == "count" else _highest
        values = [
            (node, summary[field.encode_name]) for node, summary in pairs if field.encode_name in summary
        ]
        if values:
            merged[field.encode_name] = rule(values, reports)
    return merged


_OVERRIDES: Final[dict[str, _Rule]] = {
    "health": _worst_health,
    "health_reasons": _reasons_by_node,
    "streaming_enabled": _every,
    "uptime_s": _highest,
    "batch_efficiency": _batch_efficiency,
    "latency_ms": _latency,
}
# Who answered and the per-node reports: set by the answering node around the totals.
_NOT_MERGED: Final = frozenset({"node_id", "nodes"})
_NUMBER = (msgspec.inspect.IntType, msgspec.inspect.FloatType)


def _rule_for_type(kind: msgspec.inspect.Type) -> _Rule | None:
    if isinstance(kind, _NUMBER):
        return _total
    if isinstance(kind, msgspec.inspect.UnionType):
        kinds = [t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType)]
        if all(isinstance(t, _NUMBER) for t in kinds):
            return _total
        if all(isinstance(t, msgspec.inspect.StrType) for t in kinds):
            return _agreed
        return None
    if isinstance(kind, msgspec.inspect.DictType) and isinstance(kind.value_type, _NUMBER):
        return _total_per_key
    if isinstance(kind, msgspec.inspect.BoolType):
        return _every
    if isinstance(kind, msgspec.inspect.ListType):
        return _joined
    if isinstance(kind, msgspec.inspect.StrType):
        return _agreed
    return None


def _rule_for_value(value: Any) -> _Rule:
    if isinstance(value, bool):
        return _every
    if isinstance(value, int | float):
        return _total
    if isinstance(value, dict) and all(isinstance(v, int | float) for v in value.values()):
        return _total_per_key
    if isinstance(value, list):
        return _joined
    return _agreed


def _struct_fields(struct: type[msgspec.Struct]) -> tuple[msgspec.inspect.Field, ...]:
    return cast(msgspec.inspect.StructType, msgspec.inspect.type_info(struct)).fields


def _rules() -> dict[str, _Rule]:
    rules: dict[str, _Rule] = {}
    for field in _struct_fields(StatsReport):
        if field.encode_name in _NOT_MERGED:
            continue
        rule = _OVERRIDES.get(field.name) or _rule_for_type(field.type)
        if rule is None:
            raise TypeError(
                f"StatsReport.{field.name} ({field.type}) has no rule for merging nodes' reports: "
                "add one to _OVERRIDES in alphaflow_server/cluster/presence.py"
            )
        rules[field.encode_name] = rule
    return rules


_RULES: Final = _rules()
