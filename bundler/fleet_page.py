"""``sealift fleet report --html``: the fleet database as one self-contained static page.

The page needs no server and nothing from the network (it opens from a USB stick): its plots are
inline SVG drawn here, its styles inline, and it runs no script. It shows what the fleet runs
(:func:`bundler.fleet.fleet_status`), and plots release adoption over time, rollbacks by reason,
the inference check's latency by release and profile, and how long ago each site was heard from.
Every figure on it comes from the database at the time it was written, and each table cell that
holds one carries a ``data-value`` attribute with the exact number, for tools and tests to read.
"""

from __future__ import annotations

import datetime as dt
import html
import sqlite3
import statistics
from collections.abc import Sequence
from typing import Any

from bundler.devices import Inventory
from bundler.fleet import fleet_status

__all__ = ["adoption", "inference_latency", "render_page", "rollback_reasons", "silent_sites"]

SILENT_HOURS = 24.0  # a site whose newest report is older than this is listed as not heard from
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def adoption(db: sqlite3.Connection) -> dict[str, dict[str, dict[str, int]]]:
    """Per application, per day (UTC), per release: how many devices reported running it that day
    (each device counted once a day, by its last report of the day)."""
    rows = db.execute("""SELECT app, substr(created, 1, 10) AS day, device, version, MAX(created) FROM samples
                         WHERE version IS NOT NULL GROUP BY app, day, device ORDER BY day""").fetchall()
    found: dict[str, dict[str, dict[str, int]]] = {}
    for app, day, _, version, _ in rows:
        days = found.setdefault(app, {})
        days.setdefault(day, {})
        days[day][version] = days[day].get(version, 0) + 1
    return found


def rollback_reasons(db: sqlite3.Connection) -> list[tuple[str, int]]:
    """Rollbacks by reason (the fault class and the check that failed), most frequent first."""
    rows = db.execute("SELECT fault, detail, count FROM events WHERE kind = 'rolled-back'").fetchall()
    found: dict[str, int] = {}
    for fault, reason, count in rows:
        check = str(reason or "").split(" failed", 1)[0] if " failed" in str(reason or "") else str(reason or "?")
        key = f"{fault or '?'}: {check}"
        found[key] = found.get(key, 0) + int(count or 1)
    return sorted(found.items(), key=lambda item: (-item[1], item[0]))


def inference_latency(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """The inference check's latency (its last run, passed) per application, release and profile:
    how many, median and 95th percentile, in milliseconds."""
    rows = db.execute("""SELECT c.app, c.version, r.profile, c.took FROM checks c JOIN reports r ON r.id = c.report
                         WHERE c.type = 'inference' AND c.ok = 1 AND c.took IS NOT NULL""").fetchall()
    groups: dict[tuple[str, str, str], list[float]] = {}
    for app, version, profile, took in rows:
        if isinstance(took, int | float):
            groups.setdefault((str(app), str(version), str(profile)), []).append(float(took) * 1000)
    return [{"app": app, "version": version, "profile": profile, "count": len(values),
             "median_ms": round(statistics.median(values), 1), "p95_ms": round(_percentile(values, 0.95), 1)}
            for (app, version, profile), values in sorted(groups.items())]


def silent_sites(db: sqlite3.Connection, inventory: Inventory, *, now: dt.datetime) -> list[dict[str, Any]]:
    """Every site: its devices, how many were heard from, and the hours since its newest report."""
    heard = {site: (count, newest) for site, count, newest in
             db.execute("SELECT site, COUNT(*), MAX(created) FROM devices GROUP BY site").fetchall()}
    devices: dict[str, int] = {}
    for device in inventory.devices():
        if device.revoked is None:
            devices[device.site] = devices.get(device.site, 0) + 1
    sites = []
    for site in sorted(set(devices) | set(heard)):
        count, newest = heard.get(site, (0, None))
        hours = None if newest is None else round((now - dt.datetime.fromisoformat(newest)).total_seconds() / 3600, 1)
        sites.append({"site": site, "devices": devices.get(site, count), "heard": count, "newest": newest, "hours": hours,
                      "silent": hours is None or hours > SILENT_HOURS})
    return sites


def render_page(db: sqlite3.Connection, inventory: Inventory, *, now: dt.datetime | None = None) -> str:
    """The whole page, as text."""
    now = now or dt.datetime.now(dt.UTC)
    status = fleet_status(db, inventory, now=now)
    sections = [_running(status), _adoption(adoption(db)), _rollbacks(rollback_reasons(db)), _latency(inference_latency(db)),
                _sites(silent_sites(db, inventory, now=now)), _problems(status)]
    reports = db.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sealift fleet report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: "DejaVu Sans", sans-serif; margin: 2em; color: #222; max-width: 1100px; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }} td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
td[data-value] {{ text-align: right; }} .bad {{ color: #b00; }} .none {{ color: #777; font-style: italic; }}
svg text {{ font-family: "DejaVu Sans", sans-serif; font-size: 11px; }}
</style></head><body>
<h1>Sealift fleet report</h1>
<p>Written {_e(now.isoformat(timespec="minutes"))} from <span id="reports" data-value="{reports}">{reports}</span> report(s) of
<span id="devices" data-value="{len(status["devices"])}">{len(status["devices"])}</span> device(s);
<span id="refused" data-value="{status["refused_reports"]}">{status["refused_reports"]}</span> report(s) refused.</p>
{"".join(sections)}
</body></html>
"""


def _running(status: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{_e(key)}</td><td>{_e(version)}</td><td data-value=\"{count}\">{count}</td></tr>"
                   for key, versions in sorted(status["running"].items()) for version, count in sorted(versions.items()))
    return ("<h2>What runs</h2>" + (f"<table id=\"running\"><tr><th>site, profile, application</th><th>release</th>"
                                    f"<th>devices</th></tr>{rows}</table>" if rows else _none("no device has reported yet")))


def _adoption(found: dict[str, dict[str, dict[str, int]]]) -> str:
    parts = ["<h2>Release adoption over time</h2>"]
    for app, days in sorted(found.items()):
        labels = sorted(days)
        versions = sorted({v for counts in days.values() for v in counts})
        series = {v: [days[d].get(v, 0) for d in labels] for v in versions}
        parts.append(f"<h3>{_e(app)}</h3>" + _line_chart(series, labels, y_title="devices"))
        rows = "".join(f"<tr><td>{_e(d)}</td><td>{_e(v)}</td><td data-value=\"{n}\">{n}</td></tr>"
                       for d in labels for v, n in sorted(days[d].items()))
        parts.append(f"<table class=\"adoption\" data-app=\"{_e(app)}\"><tr><th>day</th><th>release</th><th>devices</th></tr>"
                     f"{rows}</table>")
    return "".join(parts) if found else parts[0] + _none("no release reported yet")


def _rollbacks(reasons: list[tuple[str, int]]) -> str:
    if not reasons:
        return "<h2>Rollbacks by reason</h2>" + _none("no rollback reported")
    rows = "".join(f"<tr><td>{_e(reason)}</td><td data-value=\"{n}\">{n}</td></tr>" for reason, n in reasons)
    return ("<h2>Rollbacks by reason</h2>" + _bar_chart(reasons, unit="")
            + f"<table id=\"rollbacks\"><tr><th>reason</th><th>rollbacks</th></tr>{rows}</table>")


def _latency(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<h2>Inference latency by release and profile</h2>" + _none("no inference check reported")
    bars = [(f"{r['app']} {r['version']} ({r['profile']})", r["median_ms"]) for r in rows]
    cells = "".join(f"<tr><td>{_e(r['app'])}</td><td>{_e(r['version'])}</td><td>{_e(r['profile'])}</td>"
                    f"<td data-value=\"{r['count']}\">{r['count']}</td><td data-value=\"{r['median_ms']}\">{r['median_ms']}</td>"
                    f"<td data-value=\"{r['p95_ms']}\">{r['p95_ms']}</td></tr>" for r in rows)
    return ("<h2>Inference latency by release and profile</h2><p>The inference check's answer time at each install, "
            "median per release and profile (ms).</p>" + _bar_chart(bars, unit=" ms")
            + f"<table id=\"latency\"><tr><th>application</th><th>release</th><th>profile</th><th>checks</th>"
              f"<th>median ms</th><th>p95 ms</th></tr>{cells}</table>")


def _sites(sites: list[dict[str, Any]]) -> str:
    silent = [s for s in sites if s["silent"]]
    bars = [(s["site"], s["hours"]) for s in sites if s["hours"] is not None]
    cells = "".join(f"<tr class=\"{'bad' if s['silent'] else ''}\"><td>{_e(s['site'])}</td>"
                    f"<td data-value=\"{s['devices']}\">{s['devices']}</td><td data-value=\"{s['heard']}\">{s['heard']}</td>"
                    f"<td>{_e(s['newest'] or 'never')}</td>"
                    + (f"<td data-value=\"{s['hours']}\">{s['hours']}</td>" if s["hours"] is not None else "<td>never</td>")
                    + "</tr>" for s in sites)
    return (f"<h2>Sites not heard from</h2><p><span id=\"silent\" data-value=\"{len(silent)}\">{len(silent)}</span> site(s) "
            f"without a report in the last {SILENT_HOURS:g} hours"
            + (": " + ", ".join(_e(s["site"]) for s in silent) if silent else "") + ".</p>"
            + (_bar_chart(bars, unit=" h") if bars else "")
            + f"<table id=\"sites\"><tr><th>site</th><th>devices</th><th>heard from</th><th>newest report</th>"
              f"<th>hours ago</th></tr>{cells}</table>")


def _problems(status: dict[str, Any]) -> str:
    rows = [f"<tr><td>{_e(f['device'])}</td><td>{_e(f['app'])} {_e(f['version'] or '')}</td><td>{_e(f['phase'])}</td>"
            f"<td>{_e(f['reason'] or '')}</td></tr>" for f in status["failing"]]
    expiring = [f"<tr><td>{_e(x['device'])}</td><td>{_e(x['site'])}</td><td>{_e(x['expires'])}</td></tr>" for x in status["expiring"]]
    behind = [f"<tr><td>{_e(b['device'])}</td><td>{_e(b['app'])}</td><td>{_e(b['version'])}</td><td>{_e(b['newest'])}</td></tr>"
              for b in status["behind"]]
    return ("<h2>Failing devices</h2>" + (f"<table id=\"failing\"><tr><th>device</th><th>release</th><th>phase</th>"
                                          f"<th>reason</th></tr>{''.join(rows)}</table>" if rows else _none("none"))
            + "<h2>Behind the newest release</h2>" + (f"<table id=\"behind\"><tr><th>device</th><th>application</th>"
                                                       f"<th>runs</th><th>newest</th></tr>{''.join(behind)}</table>"
                                                       if behind else _none("none"))
            + "<h2>Signed metadata expiring within 14 days</h2>" + (
                f"<table id=\"expiring\"><tr><th>device</th><th>site</th><th>expires</th></tr>{''.join(expiring)}</table>"
                if expiring else _none("none")))


def _line_chart(series: dict[str, list[int]], labels: Sequence[str], *, y_title: str) -> str:
    width, height, left, bottom = 720, 240, 48, 40
    top = max((max(values) for values in series.values()), default=1) or 1
    step = (width - left - 20) / max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: float) -> float:
        return height - bottom - v / top * (height - bottom - 20)

    lines = []
    for n, (name, values) in enumerate(sorted(series.items())):
        colour = _PALETTE[n % len(_PALETTE)]
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        lines.append(f"<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{points}\"/>"
                     + "".join(f"<circle cx=\"{x(i):.1f}\" cy=\"{y(v):.1f}\" r=\"3\" fill=\"{colour}\"/>" for i, v in enumerate(values))
                     + f"<rect x=\"{width - 150}\" y=\"{12 + n * 16}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>"
                     + f"<text x=\"{width - 135}\" y=\"{21 + n * 16}\">{_e(name)}</text>")
    ticks = "".join(f"<text x=\"{x(i):.1f}\" y=\"{height - bottom + 16}\" text-anchor=\"middle\">{_e(label[5:])}</text>"
                    for i, label in enumerate(labels) if len(labels) <= 12 or i % (len(labels) // 12 + 1) == 0)
    axis = (f"<line x1=\"{left}\" y1=\"{y(0):.1f}\" x2=\"{width - 20}\" y2=\"{y(0):.1f}\" stroke=\"#999\"/>"
            f"<text x=\"{left - 6}\" y=\"{y(top) + 4:.1f}\" text-anchor=\"end\">{top}</text>"
            f"<text x=\"{left - 6}\" y=\"{y(0) + 4:.1f}\" text-anchor=\"end\">0</text>"
            f"<text x=\"12\" y=\"{height / 2}\" transform=\"rotate(-90 12 {height / 2})\">{_e(y_title)}</text>")
    return (f"<svg role=\"img\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
            f"xmlns=\"http://www.w3.org/2000/svg\">{axis}{ticks}{''.join(lines)}</svg>")


def _bar_chart(items: Sequence[tuple[str, float]], *, unit: str) -> str:
    width, row, label_width = 720, 22, 300
    top = max((value for _, value in items), default=1) or 1
    bars = "".join(
        f"<text x=\"{label_width - 6}\" y=\"{i * row + 15}\" text-anchor=\"end\">{_e(label[:48])}</text>"
        f"<rect x=\"{label_width}\" y=\"{i * row + 4}\" width=\"{max(value / top * (width - label_width - 90), 1):.1f}\" "
        f"height=\"{row - 8}\" fill=\"{_PALETTE[i % len(_PALETTE)]}\"/>"
        f"<text x=\"{label_width + max(value / top * (width - label_width - 90), 1) + 6:.1f}\" y=\"{i * row + 15}\">"
        f"{value:g}{_e(unit)}</text>" for i, (label, value) in enumerate(items))
    height = len(items) * row + 8
    return (f"<svg role=\"img\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" "
            f"xmlns=\"http://www.w3.org/2000/svg\">{bars}</svg>")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _none(text: str) -> str:
    return f"<p class=\"none\">{_e(text)}</p>"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
