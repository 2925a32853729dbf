"""The measurements, rounds alternating between systems, the table and the JSON of raw numbers."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers.common import PeerModel, write_spec
from benchmarks.peers.systems import LitServePeer, Ours, RayPeer, System, missing_package, tree_memory_mb
from benchmarks.serving import CONFIGS, make_request

REPO = Path(__file__).resolve().parents[2]
SYSTEMS = ("anysat-serve", "litserve", "ray-serve")
SOLO_REQUESTS = 4


def export_graphs(size: str, tmp: Path) -> tuple[Path, Path, list[Path]]:
    """A seeded ``size`` checkpoint and its three configurations' ONNX graphs, through the export cache the
    worker reads (so every system serves the very same files)."""
    import torch

    from model import create_model, save_checkpoint
    from model.checkpoint import file_sha256
    from service.runtime.export import ExportCache

    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model(size), tmp / f"{size}.safetensors")
    cache = ExportCache(tmp / "exports", create_model(checkpoint=ckpt), file_sha256(ckpt))
    return ckpt, tmp / "exports", [cache.get(c)[0].directory / "model.onnx" for c in CONFIGS]


def spec_entries(graphs: list[Path]) -> list[dict[str, Any]]:
    from model.sensors import SENSORS

    return [{"onnx": str(g), "sensors": [{"name": n, "series": SENSORS[n].time_series,
                                          "mean": list(SENSORS[n].stats.mean), "std": list(SENSORS[n].stats.std)}
                                         for n in c.names]} for g, c in zip(graphs, CONFIGS, strict=True)]


def pct(values: list[float]) -> dict[str, float]:
    p = np.percentile(np.asarray(values) * 1000, [50, 95, 99])
    return {"p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2])}


class Bench:
    def __init__(self, args: argparse.Namespace, pool: list[list[dict[str, np.ndarray]]], raw: PeerModel) -> None:
        self.args, self.pool, self.raw = args, pool, raw
        self.cursor = 0

    def work(self, n: int, configs: list[int]) -> list[tuple[int, dict[str, np.ndarray]]]:
        out = []
        for i in range(n):
            c = configs[i % len(configs)]
            out.append((c, self.pool[c][(self.cursor + i) % len(self.pool[c])]))
        self.cursor += n
        return out

    def load(self, system: System, callers: int, n: int, configs: list[int]) -> dict[str, Any]:
        """``n`` requests from ``callers`` closed-loop callers: rate, latencies, forward sizes."""
        def one(item: tuple[int, dict[str, np.ndarray]]) -> tuple[float, int | None]:
            started = time.perf_counter()
            _, batch = system.call(*item)
            return time.perf_counter() - started, batch

        work = self.work(n, configs)
        before, cpu = system.batch_stats(), system.cpu_seconds()
        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as ex:
            results = list(ex.map(one, work))
        elapsed = time.perf_counter() - started
        after, cpu = system.batch_stats(), system.cpu_seconds() - cpu
        if before is not None and after is not None:
            mean_batch = (after[0] - before[0]) / max(1e-9, after[1] - before[1])
        else:  # each answer says the size of its forward: forwards = sum over requests of 1/size
            mean_batch = n / sum(1 / b for _, b in results if b)
        return {"rate": n / elapsed, "latencies": [t for t, _ in results], "mean_batch": mean_batch,
                "cpu_per_request": cpu / n}

    def solo(self, system: System, pairs: int) -> dict[str, Any]:
        """1 caller: the raw forward of a request (stacked alone), then that request served; back to back, after
        an untimed pair. The same few requests each round, so both sides have met their shapes before."""
        raw_t, served_t = [], []
        few = self.pool[0][:SOLO_REQUESTS]
        for i in range(pairs + 1):
            c, request = 0, few[i % len(few)]
            feed = self.raw.stack(c, [request])
            started = time.perf_counter()
            self.raw.sessions[c].run(None, feed)
            raw_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            system.call(c, request)
            served_t.append(time.perf_counter() - started)
        return {"raw": raw_t[1:], "served": served_t[1:]}

    def raw_rate(self, seconds: float) -> tuple[float, float]:
        """Tiles/s of the raw forward at the batch size, and its CPU seconds per tile."""
        batch = [r for _, r in self.work(self.args.batch, [0])]
        feed = self.raw.stack(0, batch)
        runs, started, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - started < seconds or runs < 2:
            self.raw.sessions[0].run(None, feed)
            runs += 1
        tiles = runs * self.args.batch
        return tiles / (time.perf_counter() - started), (time.process_time() - cpu) / tiles


def batching_gain(bench: Bench, batch: int, repeats: int) -> list[dict[str, float]]:
    """Per configuration: the raw forward's ms per tile alone and at ``batch`` (what batching can buy here)."""
    out = []
    for c in range(len(CONFIGS)):
        requests = bench.pool[c][:batch]
        row = {}
        for b in (1, batch):
            feed = bench.raw.stack(c, requests[:b])
            bench.raw.sessions[c].run(None, feed)
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                bench.raw.sessions[c].run(None, feed)
                times.append(time.perf_counter() - started)
            row[f"ms_per_tile_b{b}"] = 1000 * statistics.median(times) / b
        out.append(row)
    return out


def measure(args: argparse.Namespace, systems: list[System], bench: Bench, log: Callable[[str], None]
            ) -> dict[str, Any]:
    raw: dict[str, list[Any]] = {s.name: [] for s in systems}
    raw_rates: list[float] = []
    raw_cpu: list[float] = []
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        for system in order:
            bench.cursor = r * args.requests  # every system gets the same requests in a round
            system.resume()
            system.call(0, bench.pool[0][0])  # the first answer after a pause is slow for a peer
            t0 = time.perf_counter()
            entry = {"round": r, "saturation": bench.load(system, 32, args.requests, [0]),
                     "callers8": bench.load(system, 8, max(2, args.requests // 2), [0]),
                     "solo": bench.solo(system, args.solo),
                     "mixed": bench.load(system, 32, args.requests, [0, 1, 2])}
            system.pause()
            raw[system.name].append(entry)
            log(f"# round {r + 1}/{args.rounds} {system.name}: {entry['saturation']['rate']:.2f} tiles/s, "
                f"mixed {entry['mixed']['rate']:.2f} tiles/s ({time.perf_counter() - t0:.0f} s)")
        rate, cpu = bench.raw_rate(args.requests / max(1e-9, raw[order[-1].name][-1]["saturation"]["rate"]))
        raw_rates.append(rate)
        raw_cpu.append(cpu)
        log(f"# round {r + 1}/{args.rounds} raw ORT at B={args.batch}: {raw_rates[-1]:.2f} tiles/s")
    return {"rounds": raw, "raw_rates": raw_rates, "raw_cpu_per_tile": raw_cpu,
            "batching_gain": batching_gain(bench, args.batch, 1 if args.quick else 3)}


def summarise(runs: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, entries in runs["rounds"].items():
        solo_raw = [t for e in entries for t in e["solo"]["raw"]]
        solo = [t for e in entries for t in e["solo"]["served"]]
        s: dict[str, float] = {
            "throughput": statistics.median(e["saturation"]["rate"] for e in entries),
            "mixed_throughput": statistics.median(e["mixed"]["rate"] for e in entries),
            "mixed_mean_batch": statistics.mean(e["mixed"]["mean_batch"] for e in entries),
            "uniform_mean_batch": statistics.mean(e["saturation"]["mean_batch"] for e in entries),
            "cpu_ms_per_request": 1000 * statistics.median(e["saturation"]["cpu_per_request"] for e in entries),
            "mixed_cpu_ms_per_request": 1000 * statistics.median(e["mixed"]["cpu_per_request"] for e in entries),
            "added_p50_1": 1000 * statistics.median(np.subtract(solo, solo_raw)),
            "raw_forward_1": 1000 * statistics.median(solo_raw)}
        for callers, key in ((1, None), (8, "callers8"), (32, "saturation")):
            lat = solo if key is None else [t for e in entries for t in e[key]["latencies"]]
            s.update({f"{k}_{callers}": v for k, v in pct(lat).items()})
        out[name] = s
    return out


# (key, label, higher is better)
MEASURES = [("throughput", "throughput at saturation, 32 callers (tiles/s)", True),
            ("p50_1", "p50 at 1 caller (ms)", False), ("p95_1", "p95 at 1 caller (ms)", False),
            ("p99_1", "p99 at 1 caller (ms)", False),
            ("added_p50_1", "added p50 at 1 caller over the raw forward (ms)", False),
            ("p50_8", "p50 at 8 callers (ms)", False), ("p95_8", "p95 at 8 callers (ms)", False),
            ("p99_8", "p99 at 8 callers (ms)", False),
            ("p50_32", "p50 at 32 callers (ms)", False), ("p95_32", "p95 at 32 callers (ms)", False),
            ("p99_32", "p99 at 32 callers (ms)", False),
            ("uniform_mean_batch", "mean forward batch, uniform, 32 callers", True),
            ("cpu_ms_per_request", "server CPU per request at saturation (ms; all its processes)", False),
            ("mixed_throughput", "mixed traffic (3 configurations), 32 callers (tiles/s)", True),
            ("mixed_mean_batch", "mean forward batch, mixed", True),
            ("mixed_cpu_ms_per_request", "server CPU per request, mixed (ms)", False),
            ("rss_mb", "gateway + server processes, RSS sum (MB)", False),
            ("pss_mb", "gateway + server processes, PSS sum (MB)", False),
            ("processes", "processes", False),
            ("idle_cpu_pct", "CPU burnt while idle (% of a core)", False),
            ("max_abs_diff_vs_raw", "max abs difference of an embedding from the raw forward's", False)]


NO_RATIO = {"processes", "max_abs_diff_vs_raw"}
DIFFERENCES = {"added_p50_1"}


def _fmt(v: float) -> str:
    return f"{v:.1e}" if 0 < abs(v) < 0.05 else f"{v:.1f}" if abs(v) < 1e4 else f"{v:.0f}"


def table(summary: dict[str, dict[str, float]], raw_tput: float, raw_cpu_ms: float, batch: int) -> str:
    names = list(summary)
    peers = [n for n in names if n != "anysat-serve"]
    head = "| measure | " + " | ".join(names) + " | ours ÷ best peer |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for key, label, higher in MEASURES:
        values = [summary[n].get(key, float("nan")) for n in names]
        ratio = ""
        if "anysat-serve" in summary and peers and key not in NO_RATIO:
            best = (max if higher else min)(summary[p][key] for p in peers)
            # a ratio of differences that can be negative (the added latency) means nothing: ours - best then
            ratio = f"{summary['anysat-serve'][key] / best:.2f}" if best > 0 and key not in DIFFERENCES else \
                f"{summary['anysat-serve'][key] - best:+.1f} (ours − best)"
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in values) + f" | {ratio} |")
    lines.append(f"| raw ONNX Runtime forward at B={batch} (the ceiling): tiles/s; CPU ms per tile | "
                 f"{raw_tput:.2f}; {raw_cpu_ms:.0f} |" + " |" * len(names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peers import __doc__ as doc

    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="tiny", help="model size (tiny, base)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--batch", type=int, default=8, help="max batch size of every system (and the raw forward)")
    p.add_argument("--wait-ms", type=float, default=5.0, help="max batch wait of every system")
    p.add_argument("--requests", type=int, default=64, help="requests per saturation / mixed run")
    p.add_argument("--solo", type=int, default=12, help="raw/served pairs at 1 caller, per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds each system's idle CPU is measured")
    p.add_argument("--quick", action="store_true", help="1 round, a few requests per system (the test's mode)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "peers.json", help="JSON of the raw numbers")
    p.add_argument("--work-dir", type=Path, default=REPO / "build" / "peers-work",
                   help="checkpoint, exported graphs (kept: a rerun reuses them) and each system's log")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.solo, args.idle_s = 1, 6, 2, 1.0

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    skipped = {n: why for n in args.systems if (why := missing_package(n))}
    for name, why in skipped.items():
        log(f"# {name} skipped: {why}")
    rng = np.random.default_rng(0)
    tmp = args.work_dir / args.size
    tmp.mkdir(parents=True, exist_ok=True)
    log(f"# exporting {len(CONFIGS)} configurations ({args.size}) ...")
    ckpt, export_dir, graphs = export_graphs(args.size, tmp)
    write_spec(tmp / "spec.json", spec_entries(graphs))
    pool = [[make_request(c, rng) for _ in range(24)] for c in CONFIGS]
    raw = PeerModel(tmp / "spec.json")
    logs = {n: open(tmp / f"{n}.log", "wb") for n in args.systems}  # noqa: SIM115 (closed below)
    classes = {"anysat-serve": lambda: Ours(ckpt, export_dir, CONFIGS, args.batch, args.wait_ms,
                                            logs["anysat-serve"]),
               "litserve": lambda: LitServePeer(tmp / "spec.json", args.batch, args.wait_ms, logs["litserve"]),
               "ray-serve": lambda: RayPeer(tmp / "spec.json", args.batch, args.wait_ms, logs["ray-serve"])}
    systems: list[System] = [classes[n]() for n in args.systems if n not in skipped]
    bench = Bench(args, pool, raw)
    started: list[System] = []
    try:
        for s in systems:  # all start at once: each peer's start-up is long, and they wait in parallel
            s.start()
            started.append(s)
        for s in systems:
            s.wait_ready(pool[0][0])
        agreement = {}
        for s in systems:  # warm every configuration's session, then a burst to warm the batching path
            # ...and check each answers what the raw forward of the same request does (same graph, same inputs)
            agreement[s.name] = max(float(np.abs(s.call(c, pool[c][0])[0] - raw.forward(c, [pool[c][0]])[0]).max())
                                    for c in range(len(CONFIGS)))
            bench.load(s, 8, 8, [0, 1, 2])
            s.pause()
        idle = {}
        for s in systems:  # CPU its processes burn while nothing is asked of them (the others paused)
            s.resume()
            time.sleep(0.5)
            before = s.cpu_seconds()
            time.sleep(args.idle_s)
            idle[s.name] = 100 * (s.cpu_seconds() - before) / args.idle_s
            s.pause()
        log(f"# ready: {', '.join(s.name for s in systems)}; idle CPU % of a core: {idle}")
        runs = measure(args, systems, bench, log)
        memory = {s.name: tree_memory_mb(s.pid) for s in systems}
    finally:
        for s in started:
            s.stop()
        for f in logs.values():
            f.close()
    summary = summarise(runs)
    for name, (rss, pss, rows) in memory.items():
        summary[name].update(rss_mb=rss, pss_mb=pss, processes=len(rows), idle_cpu_pct=idle[name],
                             max_abs_diff_vs_raw=agreement[name])
    raw_tput = statistics.median(runs["raw_rates"])
    print(f"\nTreeSatAI configuration ({args.size}; aerial 300 px + s2 + s1-asc, patch 20 m, tile), ONNX Runtime "
          f"CPU, same graphs and session options; max batch {args.batch}, wait {args.wait_ms:g} ms; "
          f"{args.rounds} rounds alternating, {args.requests} requests per load\n")
    print(table(summary, raw_tput, 1000 * statistics.median(runs["raw_cpu_per_tile"]), args.batch))
    gains = [f"{'+'.join(CONFIGS[c].names)} patch {CONFIGS[c].patch_size}: {g['ms_per_tile_b1']:.0f} / "
             f"{g[f'ms_per_tile_b{args.batch}']:.0f}" for c, g in enumerate(runs["batching_gain"])]
    print(f"\nraw forward, ms per tile at B=1 / B={args.batch} (what batching can buy on this machine): "
          + "; ".join(gains))
    for name, why in skipped.items():
        print(f"\n{name}: skipped ({why})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "summary": summary,
                                    "raw_rates": runs["raw_rates"], "raw_cpu_per_tile": runs["raw_cpu_per_tile"],
                                    "batching_gain": runs["batching_gain"], "skipped": skipped,
                                    "settings": {s.name: s.settings for s in systems},
                                    "processes": {n: m[2] for n, m in memory.items()},
                                    "rounds": runs["rounds"]}, indent=1))
    print(f"\nraw numbers: {args.out}")
    return 0
