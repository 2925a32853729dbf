"""Generates ``dashboards/anysat.json`` (what Grafana loads) with Grafana's own ``grafana-foundation-sdk``.

    python deploy/grafana/build.py           # rewrite the committed JSON
    python deploy/grafana/build.py --check   # exit 1 if the committed JSON is not what this file generates

Edit the panels here, never the JSON. Every target's query is proven on live data by ``deploy/prometheus/prove.py``
(``$instance``/``$worker`` are the gateway and worker template variables; ``$__rate_interval`` is Grafana's).
Queue gauges are reported alike by every gateway: aggregated with max(). Metric reference: docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableOption, VariableRefresh
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards" / "anysat.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="anysat-prometheus")  # provisioning/datasources names it
UID = "anysat-serve"

GW = 'instance=~"$instance"'
WK = 'instance=~"$worker"'
RI = "$__rate_interval"
INFER = 'route=~"/v[0-9].*"'  # inference routes: health checks and /metrics would dilute ratios and latency


@dataclass(frozen=True)
class Panel:
    title: str
    targets: tuple[tuple[str, str], ...]  # (expr, legend)
    unit: str = "short"
    kind: str = "timeseries"  # or heatmap, stat
    description: str = ""
    width: int = 8


def _quantiles(metric: str, sel: str, qs: tuple[float, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{sel}}}[{RI}])))",
                  f"p{round(q * 100)}") for q in qs)


ROWS: dict[str, list[Panel]] = {
    "Traffic (gateways)": [
        Panel("Request rate by route and status",
              ((f"sum by (route, status) (rate(anysat_gateway_requests_total{{{GW}}}[{RI}]))",
                "{{route}} {{status}}"),),
              "reqps"),
        Panel("Error ratio (5xx) by route",
              # `or ... * 0`: a route without any 5xx shows 0, not nothing; `> 0`: an idle route shows nothing,
              # not 0/0 = NaN
              ((f'(sum by (route) (rate(anysat_gateway_requests_total{{{GW}, {INFER}, status=~"5.."}}[{RI}]))'
                f" or sum by (route) (rate(anysat_gateway_requests_total{{{GW}, {INFER}}}[{RI}])) * 0)"
                f" / (sum by (route) (rate(anysat_gateway_requests_total{{{GW}, {INFER}}}[{RI}])) > 0)",
                "{{route}}"),),
              "percentunit"),
        Panel("End-to-end latency (inference routes)",
              _quantiles("anysat_gateway_request_seconds", f"{GW}, {INFER}", (0.5, 0.95, 0.99)), "s"),
        Panel("429 / 503 / 504 by reason",
              ((f"sum by (reason) (rate(anysat_gateway_rejected_total{{{GW}}}[{RI}]))", "refused: {{reason}}"),
               (f'sum by (status) (rate(anysat_gateway_requests_total{{{GW}, status=~"429|503|504"}}[{RI}]))',
                "HTTP {{status}}")),
              "reqps", description="Refusals by reason (error code or the limit's setting name), and the answers "
                                   "by status."),
        Panel("Queue depth and in-flight",
              (("max by (state) (anysat_queue_depth)", "queue {{state}}"),
               (f"sum(anysat_gateway_in_flight{{{GW}}})", "gateway in flight")),
              description="Queue gauges are the same on every gateway (max); in-flight is per gateway (sum). "
                          "The limit is anysat_queue_max_depth."),
        Panel("Live workers",
              (("max by (state) (anysat_live_workers)", "heartbeats {{state}}"),
               ('count(up{job="anysat-worker"} == 1)', "worker targets up")),
              description="Heartbeats in Redis (what /readyz uses) and worker /metrics targets Prometheus reaches."),
    ],
    "Workers": [
        Panel("Batch size distribution",
              ((f"sum by (le) (rate(anysat_batch_size_bucket{{{WK}}}[{RI}]))", "{{le}}"),),
              kind="heatmap", description="Requests per model call."),
        Panel("Queue wait and inference time p95",
              ((f"histogram_quantile(0.95, sum by (le) (rate(anysat_queue_wait_seconds_bucket{{{WK}}}[{RI}])))",
                "queue wait p95"),
               (f"histogram_quantile(0.95, sum by (le) (rate(anysat_inference_seconds_bucket{{{WK}}}[{RI}])))",
                "inference p95")),
              "s"),
        Panel("Tiles/s per worker",
              ((f'sum by (instance) (rate(anysat_requests_total{{{WK}, outcome="ok"}}[{RI}]))', "{{instance}}"),),
              "reqps", description="One queued request is one tile."),
        Panel("Export cache and graphs loaded",
              ((f"sum(rate(anysat_export_cache_hits_total{{{WK}}}[{RI}]))", "cache hits/s"),
               (f"sum(rate(anysat_export_cache_misses_total{{{WK}}}[{RI}]))", "cache misses/s"),
               (f"sum by (instance) (anysat_graphs_loaded{{{WK}}})", "graphs loaded {{instance}}")),
              description="A miss is an export built while a request waits; graphs are per worker."),
        Panel("Export cache size",
              (("max(anysat_export_cache_bytes)", "bytes on disk"),), "bytes", kind="stat", width=4),
        Panel("Reclaimed and dead-lettered",
              ((f"sum(rate(anysat_reclaimed_total{{{WK}}}[{RI}]))", "reclaimed/s"),
               (f"sum(rate(anysat_dead_lettered_total{{{WK}}}[{RI}]))", "dead-lettered/s"),
               ("max(anysat_dead_letter_length)", "dead-letter stream length")),
              width=12),
    ],
    "Resources": [
        Panel("Redis memory",
              (("max(redis_memory_used_bytes)", "used"), ("max(redis_memory_max_bytes)", "maxmemory (0: none)")),
              "bytes", width=6),
        Panel("Redis reachable",
              (("min(anysat_gateway_redis_up)", "from every gateway"), ("min(redis_up)", "from the exporter")),
              kind="stat", width=6, description="1 = up. A gateway that cannot read Redis answers 503."),
        Panel("Process RSS per instance",
              (('sum by (job, instance) (process_resident_memory_bytes{job=~"anysat-.*"})', "{{job}} {{instance}}"),),
              "bytes", width=6),
        Panel("Process CPU per instance",
              ((f'sum by (job, instance) (rate(process_cpu_seconds_total{{job=~"anysat-.*"}}[{RI}]))',
                "{{job}} {{instance}}"),),
              "percentunit", width=6, description="CPU seconds per second (1 = one core)."),
    ],
}

VARIABLES = (  # (name, label, query)
    ("instance", "gateway", "label_values(anysat_gateway_build_info, instance)"),
    ("worker", "worker", "label_values(anysat_worker_build_info, instance)"),
)


def _panel(p: Panel, panel_id: int) -> Any:  # the SDK's panel builders share no public base class
    kinds = {"timeseries": timeseries.Panel, "heatmap": heatmap.Panel, "stat": stat.Panel}
    panel = kinds[p.kind]().id(panel_id).title(p.title).datasource(DATASOURCE).height(8).span(p.width)
    if p.kind != "heatmap":
        panel = panel.unit(p.unit)
    if p.description:
        panel = panel.description(p.description)
    for i, (expr, legend) in enumerate(p.targets):
        target = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + i)).datasource(
            DATASOURCE)
        if p.kind == "heatmap":
            target = target.format(PromQueryFormat.HEATMAP)
        panel = panel.with_target(target)
    return panel


def build() -> dict[str, Any]:
    d = (db.Dashboard("AnySat serving").uid(UID).tags(["anysat", "generated"]).refresh("10s")
         .time("now-30m", "now").timezone("browser").editable()
         .description("Generated by deploy/grafana/build.py; every query is proven by deploy/prometheus/prove.py."))
    for name, label, query in VARIABLES:
        d = d.with_variable(db.QueryVariable(name).label(label).query(query).datasource(DATASOURCE)
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True)
                            .all_value(".*").current(VariableOption(selected=True, text="All", value="$__all")))
    panel_id = 0
    for row, panels in ROWS.items():
        panel_id += 1
        d = d.with_row(db.Row(row).id(panel_id))
        for p in panels:
            panel_id += 1
            d = d.with_panel(_panel(p, panel_id))
    return _without_nulls(json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build())))


def _without_nulls(value: Any) -> Any:
    """Unset fields as absent, not null: Grafana fills in defaults only for absent keys (a null ``options``
    would stay null)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed JSON instead of writing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is not what build.py generates: run python deploy/grafana/build.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
