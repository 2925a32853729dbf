"""Proves the Grafana dashboard on live data: every panel query and template-variable query, run against a
Prometheus HTTP API, must return a non-empty, finite result; every alert rule must be loaded and healthy.

    python deploy/prometheus/prove.py --url http://127.0.0.1:9090                  # table; exit 1 on any failure
    python deploy/prometheus/prove.py --url ... --wait-alert AnysatNoLiveWorkers --state firing --timeout 90
    python deploy/prometheus/prove.py --url ... --wait-alert AnysatNoLiveWorkers --state inactive --timeout 90

Template variables are substituted twice: with ``.*`` (Grafana's "All") and with the first value their own
query returns, so a variable that matches nothing the panels select fails too. ``$__rate_interval`` becomes
``--rate-interval``. Needs only httpx and the standard library (the e2e test runs it on the host).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

DASHBOARD = Path(__file__).resolve().parents[1] / "grafana" / "dashboards" / "anysat.json"
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<metric>.+),\s*)?(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")


@dataclass
class Check:
    panel: str
    query: str
    series: int
    value: str
    ok: bool


def api(client: httpx.Client, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    r.raise_for_status()
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body}")
    return body["data"]


def variable_values(client: httpx.Client, query: str) -> list[str]:
    m = _LABEL_VALUES.match(query.strip())
    if m is None:
        raise ValueError(f"unsupported variable query {query!r} (label_values(metric, label) only)")
    params: dict[str, Any] = {"match[]": m["metric"]} if m["metric"] else {}
    return sorted(api(client, f"/api/v1/label/{m['label']}/values", **params))


def substitute(expr: str, values: dict[str, str], rate_interval: str) -> str:
    out = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(values, key=len, reverse=True):  # $instance before $inst
        out = out.replace(f"${{{name}}}", values[name]).replace(f"${name}", values[name])
    return out


def evaluate(client: httpx.Client, panel: str, expr: str) -> Check:
    data = api(client, "/api/v1/query", query=expr)
    result = data["result"]
    if data["resultType"] == "scalar":
        result = [{"metric": {}, "value": result}]
    values = [float(s["value"][1]) for s in result]
    finite = bool(values) and all(math.isfinite(v) for v in values)
    if not values:
        shown = "(empty)"
    elif len(values) == 1:
        shown = f"{values[0]:.4g}"
    else:
        shown = f"{min(values):.4g} .. {max(values):.4g}"
    return Check(panel, expr, len(values), shown, finite)


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return [p for p in out if p.get("targets")]


def prove(client: httpx.Client, dashboard: dict[str, Any], rate_interval: str) -> list[Check]:
    checks: list[Check] = []
    first: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
        vals = variable_values(client, query)
        checks.append(Check(f"${var['name']} (variable)", query, len(vals), ", ".join(vals[:4]) or "(empty)",
                            bool(vals)))
        if vals:
            # Grafana's regex escaping, as a PromQL string: a backslash is written twice
            first[var["name"]] = re.escape(vals[0]).replace("\\", "\\\\")
    names = [v["name"] for v in dashboard.get("templating", {}).get("list", [])]
    for p in panels(dashboard):
        for t in p["targets"]:
            expr = t["expr"]
            checks.append(evaluate(client, p["title"], substitute(expr, {n: ".*" for n in names}, rate_interval)))
            if any(f"${n}" in expr for n in first):
                chosen = {n: first.get(n, ".*") for n in names}
                checks.append(evaluate(client, f"{p['title']} [first value]", substitute(expr, chosen, rate_interval)))
    for group in api(client, "/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            healthy = rule.get("health") == "ok"
            checks.append(Check(f"rule {rule['name']}", rule["query"].replace("\n", " "), 1,
                                rule.get("state", rule["type"]) if healthy else f"{rule.get('health')}: "
                                f"{rule.get('lastError', '')}", healthy))
    return checks


def print_table(checks: list[Check], width: int = 70) -> None:
    rows = [("panel", "query", "series", "value", "ok")] + [
        (c.panel, c.query if len(c.query) <= width else c.query[: width - 3] + "...", str(c.series), c.value,
         "ok" if c.ok else "FAIL") for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def alert_state(client: httpx.Client, name: str) -> str:
    """``firing``, ``pending`` or ``inactive`` (not active at all) for the alert named ``name``."""
    states = {a["state"] for a in api(client, "/api/v1/alerts")["alerts"] if a["labels"].get("alertname") == name}
    return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


def wait_alert(client: httpx.Client, name: str, state: str, timeout_s: float, poll_s: float = 1.0) -> float | None:
    """Seconds until ``name`` reached ``state`` (None on timeout), printing each change of state."""
    names = {r["name"] for g in api(client, "/api/v1/rules", type="alert")["groups"] for r in g["rules"]}
    if name not in names:
        raise SystemExit(f"no alert rule {name!r} loaded (have: {', '.join(sorted(names))})")
    started, last = time.monotonic(), None
    while True:
        now = alert_state(client, name)
        elapsed = time.monotonic() - started
        if now != last:
            print(f"{elapsed:6.1f} s  {name}: {now}", flush=True)
            last = now
        if now == state:
            return elapsed
        if elapsed >= timeout_s:
            return None
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    p.add_argument("--dashboard", type=Path, default=DASHBOARD)
    p.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes (default 1m)")
    p.add_argument("--json", type=Path, help="also write the checks (or the alert wait) here as JSON")
    p.add_argument("--wait-alert", metavar="NAME", help="instead: wait until alert NAME is in --state")
    p.add_argument("--state", choices=("firing", "pending", "inactive"), default="firing")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds --wait-alert waits at most")
    args = p.parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=10.0) as client:
        if args.wait_alert:
            took = wait_alert(client, args.wait_alert, args.state, args.timeout)
            result = {"alert": args.wait_alert, "state": args.state, "seconds": took}
            if args.json:
                args.json.write_text(json.dumps(result))
            if took is None:
                print(f"{args.wait_alert} did not become {args.state} within {args.timeout:g} s", file=sys.stderr)
                return 1
            print(f"{args.wait_alert} {args.state} after {took:.1f} s")
            return 0
        checks = prove(client, json.loads(args.dashboard.read_text()), args.rate_interval)
    print_table(checks)
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} queries non-empty and finite, rules healthy"
          + (f"; FAILED: {', '.join(sorted({c.panel for c in failed}))}" if failed else ""))
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in checks], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
