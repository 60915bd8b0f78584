"""A static HTML snapshot of the portfolio, for exported and shared reports.

Self-contained: inline CSS, no script, no network. It shows the positions with
P&L colours, the account summary and exposure, the day's equity chart (inline
SVG) when the stream keeps an equity history, an "as of" time and a "Snapshot"
badge, so a reader of an nbconvert HTML file or nbviewer page sees the
portfolio as it was when the cell ran, with no kernel behind it.
"""

from __future__ import annotations

import html
from decimal import Decimal
from typing import Any

from .live_state import LiveReader

_CSS = """
.afl-snap{font-family:var(--jp-ui-font-family,system-ui,-apple-system,'Segoe UI',sans-serif);font-size:13px;
  color:var(--jp-ui-font-color1,#1f2328);background:var(--jp-layout-color1,#fff);
  border:1px solid var(--jp-border-color2,#d0d7de);border-radius:6px;padding:10px 12px;max-width:960px}
.afl-snap header{display:flex;gap:12px;align-items:center;flex-wrap:wrap;margin-bottom:8px}
.afl-snap .afl-snap-badge{background:#57606a;color:#fff;border-radius:10px;padding:1px 8px;font-size:11px;
  font-weight:600;letter-spacing:.02em}
.afl-snap .afl-snap-asof{color:var(--jp-ui-font-color2,#57606a)}
.afl-snap .afl-snap-summary{display:flex;gap:18px;margin:0 0 8px 0;flex-wrap:wrap}
.afl-snap .afl-snap-k{display:block;color:var(--jp-ui-font-color2,#57606a);font-size:11px}
.afl-snap .afl-snap-v{display:block;font-weight:600;font-variant-numeric:tabular-nums}
.afl-snap table{border-collapse:collapse;width:100%}
.afl-snap th,.afl-snap td{padding:3px 8px;border-bottom:1px solid var(--jp-border-color2,#eaeef2);
  text-align:right;font-variant-numeric:tabular-nums}
.afl-snap th:first-child,.afl-snap td:first-child{text-align:left}
.afl-snap th{font-size:11px;color:var(--jp-ui-font-color2,#57606a);font-weight:600}
.afl-snap .afl-gain{color:#1a7f37}.afl-snap .afl-loss{color:#cf222e}
.afl-snap svg{display:block;margin:4px 0 10px 0}
.afl-snap .afl-snap-zero{stroke:var(--jp-border-color1,#8c959f);stroke-dasharray:3 3}
.afl-snap .afl-snap-curve{fill:none;stroke:#0969da;stroke-width:1.5}
"""

_CHART_W, _CHART_H, _CHART_PAD = 600, 90, 4

_COLUMNS = (
    ("Symbol", "symbol", "text"),
    ("Qty", "qty", "qty"),
    ("Avg entry", "avg_entry_price", "money"),
    ("Price", "current_price", "money"),
    ("Market value", "market_value", "money"),
    ("Unrealized P&L", "unrealized_pl", "pl"),
    ("P&L %", "unrealized_plpc", "pct"),
    ("Day change", "change_today", "pct"),
)


def _money(value: Decimal, sign: bool = False) -> str:
    return f"{value:+,.2f}" if sign else f"{value:,.2f}"


def _cell(kind: str, value: Any) -> tuple[str, str]:
    """(text, css class) of one table cell."""
    if kind == "text":
        return html.escape(str(value)), ""
    number = Decimal(value)
    tone = "afl-gain" if number > 0 else "afl-loss" if number < 0 else ""
    if kind == "qty":
        return f"{number.normalize():,f}", ""
    if kind == "money":
        return _money(number), ""
    if kind == "pl":
        return _money(number, sign=True), tone
    return f"{number * 100:+.2f}%", tone


def snapshot_html(live: LiveReader) -> str:
    with live.reading() as state:
        positions = [state.positions[s] for s in sorted(state.positions)]
        account = state.account
    as_of = live.last_update
    stamp = "no data received" if as_of is None else as_of.strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        f"<style>{_CSS}</style>",
        '<div class="afl-snap" role="region" aria-label="Portfolio snapshot">',
        '<header><strong>Portfolio</strong><span class="afl-snap-badge">Snapshot</span>',
        f'<span class="afl-snap-asof">as of {html.escape(stamp)}</span></header>',
    ]
    if account is not None:
        day = account.equity - account.last_equity
        tone = "afl-gain" if day > 0 else "afl-loss" if day < 0 else ""
        # Spans, not a definition list: report templates style dl/dt/dd in ways that break the layout.
        long, short = account.long_market_value, abs(account.short_market_value)
        realized = account.realized_pl_today
        items = [
            ("Equity", f"{_money(account.equity)} {html.escape(account.currency)}", ""),
            ("Day P&amp;L", _money(day, sign=True), tone),
            ("Realized today", _money(realized, sign=True), _tone(realized)),
            ("Cash", _money(account.cash), ""),
            ("Buying power", _money(account.buying_power), ""),
            ("Long", _exposure(long, account.equity), ""),
            ("Short", _exposure(short, account.equity), ""),
            ("Gross", _exposure(long + short, account.equity), ""),
            ("Net", _exposure(long - short, account.equity), ""),
        ]
        parts.append('<div class="afl-snap-summary">')
        for label, value, css in items:
            parts.append(f'<div><span class="afl-snap-k">{label}</span>')
            parts.append(f'<span class="afl-snap-v {css}">{value}</span></div>')
        parts.append("</div>")
    parts.append(_equity_chart(live))
    parts.append('<table aria-label="Positions"><thead><tr>')
    parts += [f'<th scope="col">{html.escape(title)}</th>' for title, _, _ in _COLUMNS]
    parts.append("</tr></thead><tbody>")
    for position in positions:
        parts.append("<tr>")
        for _, field, kind in _COLUMNS:
            text, tone = _cell(kind, getattr(position, field))
            parts.append(f'<td class="{tone}">{text}</td>' if tone else f"<td>{text}</td>")
        parts.append("</tr>")
    if not positions:
        parts.append(f'<tr><td colspan="{len(_COLUMNS)}">No open positions</td></tr>')
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _tone(value: Decimal) -> str:
    return "afl-gain" if value > 0 else "afl-loss" if value < 0 else ""


def _exposure(value: Decimal, equity: Decimal) -> str:
    share = f" ({value / equity * 100:.2f}%)" if equity else ""
    return f"{_money(value)}{share}"


def _equity_chart(live: LiveReader) -> str:
    """The day's P&L curve against a zero line, as inline SVG (nothing if there is no history).

    Drawn from ``equity_history`` (day P&L at each account update), like the widget's chart.
    """
    history = getattr(live, "equity_history", None)
    if history is None or len(history) < 2 or "day_pl" not in history:
        return ""
    values = [float(v) for v in history["day_pl"]]
    times: list[float] = [float(t.timestamp()) for t in history.index]
    low, high = min(0.0, *values), max(0.0, *values)
    span_y, span_t = (high - low) or 1.0, (times[-1] - times[0]) or 1.0
    width, height, pad = _CHART_W, _CHART_H, _CHART_PAD

    def x(t: float) -> float:
        return pad + (t - times[0]) / span_t * (width - 2 * pad)

    def y(v: float) -> float:
        return pad + (high - v) / span_y * (height - 2 * pad)

    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
    last = history.iloc[-1]
    label = (
        f"Equity {float(last['equity']):,.2f}, day P&L {values[-1]:+,.2f} "
        f"since {history.index[0]:%H:%M:%S} UTC ({len(values)} points)"
    )
    return (
        f'<svg role="img" aria-label="{html.escape(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{html.escape(label)}</title>'
        f'<line class="afl-snap-zero" x1="{pad}" x2="{width - pad}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>'
        f'<polyline class="afl-snap-curve" points="{points}"/></svg>'
    )


def show_snapshot(live: LiveReader) -> None:
    """Display the snapshot as plain ``text/html``, which exported reports keep."""
    from IPython.display import HTML, display

    display(HTML(snapshot_html(live)))  # type: ignore[no-untyped-call]
