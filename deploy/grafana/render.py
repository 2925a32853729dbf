"""Draws the dashboard's time-series panels as one PNG from a Prometheus ``query_range`` (matplotlib; no Grafana),
labelled as drawn from a test run: the README's picture of what the dashboard shows.

    python deploy/grafana/render.py --url http://127.0.0.1:9090 --out docs/img/dashboard.png --minutes 5

Queries come from the dashboard JSON as they are, with ``$instance``/``$worker`` as ``.*`` and
``$__rate_interval`` as ``--rate-interval``. Needs httpx and matplotlib (``pip install -e ".[deploy]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "anysat.json"
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_UNITS = {"bytes": (1 / 2**20, "MiB"), "s": (1.0, "s"), "reqps": (1.0, "req/s"), "percentunit": (100.0, "%")}


def query_range(client: httpx.Client, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    r = client.get("/api/v1/query_range", params={"query": expr, "start": start, "end": end, "step": step})
    r.raise_for_status()
    return list(r.json()["data"]["result"])


def substitute(expr: str, names: list[str], rate_interval: str) -> str:
    out = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(names, key=len, reverse=True):
        out = out.replace(f"${name}", ".*")
    return out


def legend(fmt: str, labels: dict[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), fmt).strip() or json.dumps(labels)


def draw(dashboard: dict[str, Any], client: httpx.Client, out: Path, minutes: float, rate_interval: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    names = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
    panels = [p for p in dashboard["panels"] if p.get("type") == "timeseries"]
    end = time.time()
    start, step = end - minutes * 60, max(2.0, minutes * 60 / 300)
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.1 * rows), squeeze=False)
    drawn = 0
    for ax, panel in zip(axes.flat, panels, strict=False):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
        scale, label = _UNITS.get(unit, (1.0, ""))
        lines = 0
        for t in panel["targets"]:
            for series in query_range(client, substitute(t["expr"], names, rate_interval), start, end, step):
                xs = [datetime.fromtimestamp(float(ts), UTC) for ts, _ in series["values"]]
                ys = [float(v) * scale for _, v in series["values"]]
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), series["metric"])[:40])
                lines += 1
        drawn += lines > 0
        ax.set_title(panel["title"], fontsize=10)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="upper left", ncol=1 if lines < 5 else 2)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    when = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    fig.suptitle(f"{dashboard['title']}: drawn from a test run ({minutes:g} min of Prometheus data, {when}; "
                 "panels and queries from deploy/grafana/dashboards/anysat.json)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="Prometheus base URL")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    p.add_argument("--minutes", type=float, default=10.0, help="time range drawn, ending now")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    p.add_argument("--rate-interval", default="20s", help="what $__rate_interval becomes (default 20s)")
    args = p.parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=30) as client:
        dashboard = json.loads(args.dashboard.read_text())
        drawn = draw(dashboard, client, args.out, args.minutes, args.rate_interval)
    total = sum(p.get("type") == "timeseries" for p in dashboard["panels"])
    print(f"wrote {args.out}: {drawn} of {total} panels with data")
    return 0 if drawn == total else 1


if __name__ == "__main__":
    sys.exit(main())
