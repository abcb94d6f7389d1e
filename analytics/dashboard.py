"""The monitoring dashboard: one self-contained HTML page of a :class:`~analytics.report.Report`.

The page works offline, so that an analyst can mail it: Plotly's JavaScript is inlined once, the
style sheet is inlined, and nothing is fetched (no CDN, no MathJax). It draws nine charts, each in
a ``<div class="chart" id="chart-…">`` (:data:`CHARTS`), then the runs and the budget breaches as
tables whose cells are exactly :func:`~analytics.report.format_cell` of the report's rows.

Money stays a :class:`~decimal.Decimal` until a bar's length is drawn: the hover text of every cost
is the exact figure. A section without rows still gets its chart, an empty one that says "no data",
so the page always has the same shape. Every text of the data is escaped (Plotly reads a subset of
HTML in labels, so a model named ``<b>x`` would otherwise print in bold).
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

import plotly.colors
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from analytics.report import Report, Section, format_cell

#: One colour per moderation decision, the same in every chart.
DECISION_COLORS = {"approved": "#2e7d32", "flagged": "#f9a825", "rejected": "#c62828"}
#: The label of a missing key (a row with no model, no tier, no day).
NONE_LABEL = "(none)"
#: A day, in Plotly's unit of a date axis.
DAY_MS = 86_400_000
#: Plotly's options for every chart: no logo, no link out, resized with the window.
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass(frozen=True)
class Chart:
    """One chart of the page: the id of its container, its title, and how it is drawn."""

    element_id: str
    title: str
    draw: Callable[[Report], go.Figure]


def _rows(report: Report, section: str) -> list[dict[str, Any]]:
    """The rows of one section, as column → value (so a chart names the columns it reads)."""
    return report.sections[section].records()


def _label(value: Any) -> str:
    """A key as Plotly prints it: ``format_cell`` of it, escaped; ``(none)`` for None."""
    return NONE_LABEL if value is None else html.escape(format_cell(value), quote=False)


def _sum_by(rows: Iterable[dict[str, Any]], x: str, series: str, value: str) -> dict[str, dict[str, Any]]:
    """``value`` summed by series, then by x (both as labels): the input of stacked bars.

    >>> from decimal import Decimal
    >>> rows = [{"day": "2025-07-07", "tier": "free", "cost": Decimal("0.1")},
    ...         {"day": "2025-07-07", "tier": "free", "cost": Decimal("0.2")},
    ...         {"day": "2025-07-08", "tier": None, "cost": Decimal("1")}]
    >>> {tier: dict(days) for tier, days in _sum_by(rows, "day", "tier", "cost").items()}
    {'free': {'2025-07-07': Decimal('0.3')}, '(none)': {'2025-07-08': Decimal('1')}}
    """
    sums: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        sums[_label(row[series])][_label(row[x])] += row[value] or 0
    return sums


def _series_order(name: str) -> tuple[int, str]:
    """Decisions in their own order (approved, flagged, rejected), anything else by name."""
    decisions = list(DECISION_COLORS)
    return (decisions.index(name) if name in decisions else len(decisions), name)


def _bars(
    sums: dict[str, dict[str, Any]], *, unit: str, colors: dict[str, str] | None = None
) -> list[go.Bar]:
    """One bar trace per series; the hover shows the exact figure (a cost to the last decimal)."""
    traces = []
    for name in sorted(sums, key=_series_order):
        points = sorted(sums[name].items())
        traces.append(
            go.Bar(
                name=name,
                x=[x for x, _ in points],
                y=[float(v) for _, v in points],
                customdata=[format_cell(v) for _, v in points],
                hovertemplate=f"%{{x}}<br>{name}: %{{customdata}} {unit}<extra></extra>",
                marker_color=(colors or {}).get(name),
            )
        )
    return traces


def _figure(traces: list[Any], *, x_title: str, y_title: str, by_day: bool = False) -> go.Figure:
    """A chart of ``traces`` (stacked bars), or an empty chart that says "no data"."""
    figure = go.Figure(traces)
    figure.update_layout(
        template="plotly_white",
        barmode="stack",
        height=340,
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
        legend={"traceorder": "normal", "font": {"size": 10}},
        xaxis_title=x_title,
        yaxis_title=y_title,
    )
    if by_day:
        days = sorted(date.fromisoformat(x) for trace in traces for x in trace.x or () if x != NONE_LABEL)
        span = (days[-1] - days[0]).days if days else 0
        # A tick per day, or every few days: Plotly's own ticks would repeat a day at 12-hour steps.
        figure.update_xaxes(type="date", tickformat="%Y-%m-%d", dtick=DAY_MS * (1 + span // 12))
    if not any(len(trace.x or ()) for trace in traces):
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
        figure.add_annotation(
            text="no data",
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            showarrow=False,
            font={"size": 18, "color": "#888"},
        )
    return figure


def _palette(names: Iterable[str]) -> dict[str, str]:
    """A colour for each name, in sorted order: the same tier has the same colour in every chart."""
    colors = plotly.colors.qualitative.Dark24
    return {name: colors[number % len(colors)] for number, name in enumerate(sorted(set(names)))}


def _tier_colors(report: Report) -> dict[str, str]:
    return _palette(
        _label(row["ai_tier"]) for section in ("cost_by_day", "rate_limits") for row in _rows(report, section)
    )


def _cost_by_day(series: str) -> Callable[[Report], go.Figure]:
    def draw(report: Report) -> go.Figure:
        sums = _sum_by(_rows(report, "cost_by_day"), "day", series, "cost_usd")
        colors = _tier_colors(report) if series == "ai_tier" else _palette(sums)
        traces = _bars(sums, unit="USD", colors=colors)
        return _figure(traces, x_title="day (UTC)", y_title="cost (USD)", by_day=True)

    return draw


def _top_users(report: Report) -> go.Figure:
    rows = _rows(report, "top_users")[::-1]  # Plotly draws the first category at the bottom
    bar = go.Bar(
        y=[f"{_label(r['user_id'])} ({_label(r['ai_tier'])})" for r in rows],
        x=[float(r["cost_usd"] or 0) for r in rows],
        customdata=[[format_cell(r["cost_usd"]), r["events"], r["unpriced_events"]] for r in rows],
        hovertemplate="user %{y}<br>%{customdata[0]} USD, %{customdata[1]} events "
        "(%{customdata[2]} unpriced)<extra></extra>",
        orientation="h",
        showlegend=False,
    )
    figure = _figure([bar], x_title="cost (USD)", y_title="user (tier)")
    return figure.update_yaxes(type="category")


def _unpriced_share(report: Report) -> go.Figure:
    rows = _rows(report, "unpriced_by_model")
    bar = go.Bar(
        x=[_label(r["model"]) for r in rows],
        y=[100 * (r["unpriced_share"] or 0) for r in rows],
        customdata=[[r["unpriced_events"], r["events"]] for r in rows],
        hovertemplate="%{x}: %{y:.1f} % (%{customdata[0]} of %{customdata[1]} events)<extra></extra>",
        marker_color="#ef6c00",
        showlegend=False,
    )
    figure = _figure([bar], x_title="model", y_title="unpriced events (%)")
    return figure.update_xaxes(type="category").update_yaxes(rangemode="tozero")


def _decisions(report: Report) -> go.Figure:
    sums = _sum_by(_rows(report, "decisions_by_day"), "day", "decision", "events")
    traces = _bars(sums, unit="events", colors=DECISION_COLORS)
    return _figure(traces, x_title="day (UTC)", y_title="events by their decision", by_day=True)


def _review_queue(report: Report) -> go.Figure:
    rows = _rows(report, "review_queue")
    bar = go.Bar(
        x=[_label(r["decision"]) for r in rows],
        y=[r["awaiting_review"] for r in rows],
        customdata=[format_cell(r["oldest_decided_at"]) for r in rows],
        hovertemplate="%{x}: %{y} awaiting review<br>oldest decided at %{customdata}<extra></extra>",
        marker_color=[DECISION_COLORS.get(r["decision"], "#666") for r in rows],
        showlegend=False,
    )
    figure = _figure([bar], x_title="automatic decision", y_title="awaiting human review")
    return figure.update_xaxes(type="category")


def _rate_limits(report: Report) -> go.Figure:
    sums = _sum_by(_rows(report, "rate_limits"), "day", "ai_tier", "limited_events")
    traces = _bars(sums, unit="events rate-limited", colors=_tier_colors(report))
    return _figure(traces, x_title="day (UTC)", y_title="events rate-limited", by_day=True)


def _dead_letters(report: Report) -> go.Figure:
    rows = sorted(_rows(report, "dead_letters"), key=lambda r: (r["records"], str(r["reason"])))
    bar = go.Bar(
        y=[_label(r["reason"]) for r in rows],
        x=[r["records"] for r in rows],
        hovertemplate="%{y}: %{x} records<extra></extra>",
        orientation="h",
        marker_color="#6a1b9a",
        showlegend=False,
    )
    figure = _figure([bar], x_title="records", y_title="reason")
    return figure.update_yaxes(type="category")


def _cache_hit_rate(report: Report) -> go.Figure:
    # A run that looked nothing up (embeddings off) has no rate: it is left out, not drawn as 0 %.
    rows = [r for r in _rows(report, "embedding_cache") if r["hit_rate"] is not None]
    bar = go.Bar(
        x=[_label(r["run_id"]) for r in rows],
        y=[100 * r["hit_rate"] for r in rows],
        customdata=[[r["hits"], r["misses"]] for r in rows],
        hovertemplate="%{x}: %{y:.1f} % (%{customdata[0]} hits, %{customdata[1]} misses)<extra></extra>",
        texttemplate="%{y:.1f} %",
        textposition="outside",
        cliponaxis=False,
        marker_color="#00838f",
        showlegend=False,
    )
    figure = _figure([bar], x_title="run", y_title="cache hit rate (%)")
    return figure.update_xaxes(type="category").update_yaxes(range=[0, 100])


#: The charts of the page, in order.
CHARTS = (
    Chart("chart-cost-by-tier", "Cost by day and tier (USD)", _cost_by_day("ai_tier")),
    Chart("chart-cost-by-model", "Cost by day and model (USD)", _cost_by_day("model")),
    Chart("chart-top-users", "Top users by cost (USD)", _top_users),
    Chart("chart-unpriced-share", "Unpriced events by model (share of its events)", _unpriced_share),
    Chart("chart-decisions", "Moderation decisions by day (events)", _decisions),
    Chart("chart-review-queue", "Human review queue (now, whatever the period)", _review_queue),
    Chart("chart-rate-limits", "Rate-limit pressure: events limited by day and tier", _rate_limits),
    Chart("chart-dead-letters", "Dead letters by reason", _dead_letters),
    Chart("chart-cache-hit-rate", "Embedding cache hit rate by run", _cache_hit_rate),
)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 2rem 2rem; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 1rem; }
h1 { font-size: 1.5rem; margin: 1rem 0 0.25rem; }
header p { margin: 0.25rem 0 0.75rem; color: #555; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 1rem; }
.chart { border: 1px solid #e3e3e3; border-radius: 6px; padding: 0.5rem; min-height: 380px; }
.chart h2, main > h2 { font-size: 1rem; margin: 0.25rem 0.5rem; }
table { border-collapse: collapse; font-size: 0.8rem; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; white-space: nowrap; }
th { background: #f3f5f8; }
td:first-child, th:first-child { text-align: left; }
.scroll { overflow-x: auto; }
"""


def _period(report: Report) -> str:
    """The period the report covers, in words."""
    if report.since is None and report.until is None:
        return "all days"
    since = report.since.isoformat() if report.since else "the first day"
    until = report.until.isoformat() if report.until else "the last day"
    return f"{since} to {until} (UTC, both included)"


def _header(report: Report) -> str:
    runs = _rows(report, "runs")
    started = [r["started_at"] for r in runs if r["started_at"] is not None]
    finished = [r["finished_at"] for r in runs if r["finished_at"] is not None]
    span = (
        f" from {format_cell(min(started))} to {format_cell(max(finished))}" if started and finished else ""
    )
    return (
        "<header><h1>AI content governance: monitoring dashboard</h1>"
        f"<p>Output <code>{html.escape(str(report.out_dir))}</code> · period: {html.escape(_period(report))}"
        f" · {len(runs)} run{'s' if len(runs) != 1 else ''}{html.escape(span)}</p></header>"
    )


def _table(section: Section, element_id: str) -> str:
    """A section as an HTML table: its column names, then ``format_cell`` of every value."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(format_cell(v))}</td>" for v in row) + "</tr>"
        for row in section.rows
    )
    if not section.rows:
        body = f'<tr><td colspan="{len(section.columns)}">none</td></tr>'
    return (
        f'<h2>{html.escape(section.title)}</h2><div class="scroll"><table id="{element_id}">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def render_dashboard(report: Report) -> str:
    """The dashboard of ``report``: one HTML page, every script and style inlined (about 5 MB,
    nearly all of it Plotly's JavaScript, which is included once).

    Args:
        report: what :func:`analytics.report.build_report` made; every section must be present.

    Returns:
        The page, deterministic for a report (each chart's element ids are fixed).
    """
    charts = []
    for chart in CHARTS:
        plot = pio.to_html(
            chart.draw(report),
            full_html=False,
            include_plotlyjs=False,  # inlined once, in the head
            include_mathjax=False,
            config=PLOT_CONFIG,
            div_id=f"{chart.element_id}-plot",
            default_height="340px",
        )
        charts.append(
            f'<div class="chart" id="{chart.element_id}"><h2>{html.escape(chart.title)}</h2>{plot}</div>'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>AI pipeline dashboard: {html.escape(_period(report))}</title>"
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>{_header(report)}<main>"
        f'<section class="charts">{"".join(charts)}</section>'
        f"{_table(report.sections['runs'], 'runs')}"
        f"{_table(report.sections['budget_breaches'], 'budget-breaches')}"
        "</main></body></html>\n"
    )
