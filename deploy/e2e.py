"""The end-to-end driver of ``bash deploy/test.sh``: against a running compose project, over 127.0.0.1 only.

    python deploy/e2e.py run --project anysat-e2e --gateway http://127.0.0.1:18000 \
        --prometheus http://127.0.0.1:19090 --results build/e2e/results.json
    python deploy/e2e.py table build/e2e/results.json          # the table of what was measured

``run`` does, in order, and stops at the first failure (exit 1, saying what failed):
  1. the shipped TreeSatAI tile -> embeddings (tile, patch, dense); the Landsat 8 crop -> a mask GeoTIFF with the
     input's CRS and transform; /v1/models lists the pre-warmed exports;
  2. the Redis container restarted under load: 503s, fast; then 200s again with nothing else restarted;
  3. a worker's process killed under a load of >= 500 requests: 0 lost, the container restarted by its policy,
     Prometheus scraping the new process;
  4. under a bounded load: deploy/prometheus/prove.py (every dashboard query non-empty: the error panels draw
     the 503s of step 2), then the AnysatNoLiveWorkers round trip (workers stopped -> firing -> started ->
     inactive);
  5. workers scaled to 3: Prometheus discovers 3 worker targets up.
The containers are found by their compose labels (compose 1.29 and v2 name them differently).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_load import Load, Request, inputs  # deploy/ is no package: found by sys.path

ROOT = Path(__file__).resolve().parents[1]
PROVE = ROOT / "deploy" / "prometheus" / "prove.py"
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


class Failed(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def sh(*args: str, timeout: float = 120) -> str:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise Failed(f"{shlex.join(args)} exited {r.returncode}: {r.stderr.strip()[-800:]}")
    return r.stdout.strip()


class Stack:
    def __init__(self, project: str, compose: str, gateway: str, prometheus: str) -> None:
        self.project, self.compose = project, [*shlex.split(compose), "-p", project]
        self.gateway, self.prom = httpx.Client(base_url=gateway, timeout=30), httpx.Client(base_url=prometheus,
                                                                                           timeout=30)
        self.gateway_url, self.prom_url = gateway, prometheus

    def containers(self, service: str, all_: bool = False) -> list[str]:
        out = sh(DOCKER, "ps", *(["-a"] if all_ else []), "-q", "--filter",
                 f"label=com.docker.compose.project={self.project}",
                 "--filter", f"label=com.docker.compose.service={service}")
        return sorted(out.split())

    def inspect(self, cid: str) -> dict[str, Any]:
        return json.loads(sh(DOCKER, "inspect", cid))[0]

    def run_compose(self, *args: str, timeout: float = 180) -> str:
        return sh(*self.compose, *args, timeout=timeout)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.prom.get("/api/v1/query", params={"query": expr})
        r.raise_for_status()
        return r.json()["data"]["result"]

    def targets(self, job: str) -> list[dict[str, Any]]:
        r = self.prom.get("/api/v1/targets", params={"state": "active"})
        r.raise_for_status()
        return [t for t in r.json()["data"]["activeTargets"] if t["labels"].get("job") == job]

    def wait(self, what: str, cond: Any, timeout: float, every: float = 1.0) -> float:
        """Seconds until ``cond()`` is truthy; Failed after ``timeout``."""
        t0 = time.monotonic()
        while True:
            try:
                if cond():
                    return time.monotonic() - t0
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() - t0 > timeout:
                raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def workers_up(self, n: int) -> bool:
        ts = self.targets("anysat-worker")
        return len(ts) == n and all(t["health"] == "up" for t in ts)

    def prove(self, *args: str, timeout: float = 300) -> Any:
        check(PROVE.is_file(), f"{PROVE.relative_to(ROOT)} is missing (the dashboard proof)")
        out = ROOT / "build" / "e2e" / f"prove-{int(time.time() * 1000)}.json"
        r = subprocess.run([sys.executable, str(PROVE), "--url", self.prom_url, "--json", str(out), *args],
                           capture_output=True, text=True, timeout=timeout)
        print("\n".join(line for line in r.stdout.splitlines() if not line.rstrip().endswith(" ok"))[-4000:],
              r.stderr[-2000:], sep="\n", flush=True)
        check(r.returncode == 0, f"prove.py {' '.join(args) or '(dashboard queries)'} exited {r.returncode}")
        return json.loads(out.read_text()) if out.is_file() else None


def phase_requests(stack: Stack, req: Request, res: dict[str, Any]) -> None:
    models = stack.gateway.get("/v1/models").json()
    exports = models.get("exported_configurations", [])
    res["exports listed by /v1/models"] = len(exports)
    check(len(exports) >= 4, f"/v1/models lists {len(exports)} exports, the 4 of deploy/warm.json expected: {models}")
    for output in ("tile", "patch", "dense"):
        t0 = time.monotonic()
        arr = req.embed(stack.gateway, output)
        dt = time.monotonic() - t0
        res[f"TreeSatAI {output}: shape, first-request s"] = f"{list(arr.shape)}, {dt:.2f}"
        expect = {"tile": 2, "patch": 4, "dense": 4}[output]
        check(arr.ndim == expect and arr.shape[0] == 1, f"{output} embedding of shape {arr.shape}")
        check(bool((abs(arr) < 1e6).all()) and arr.std() > 0, f"{output} embedding not finite/varied")
        check(dt < 20, f"the first {output} request took {dt:.1f} s: the export cache was not pre-warmed")
    t0 = time.monotonic()
    same_crs, same_transform, shape, classes = req.mask(stack.gateway)
    res["Landsat mask: shape, classes, s"] = f"{shape}, {classes}, {time.monotonic() - t0:.2f}"
    check(same_crs and same_transform,
          f"mask GeoTIFF lost the georeference: crs kept {same_crs}, transform kept {same_transform}")


def phase_dashboard_and_alert(stack: Stack, req: Request, res: dict[str, Any]) -> None:
    with Load(req, stack.gateway_url, total=10**6, concurrency=4, retry=True) as load:
        time.sleep(20)  # several 5 s scrapes with traffic: rate() needs two points per series
        checks = stack.prove()
        load.stop()  # bounded by time: it runs while the proof does
    res["dashboard + variable queries non-empty and finite"] = f"{sum(c['ok'] for c in checks)} of {len(checks)}"
    res["load during proof: requests, lost"] = f"{load.done}, {load.lost}"
    check(load.lost == 0, f"{load.lost} requests lost during the dashboard proof: {load.failures[:3]}")
    t0 = time.monotonic()
    stack.run_compose("stop", "-t", "30", "worker")
    stack.prove("--wait-alert", "AnysatNoLiveWorkers", "--state", "firing", "--timeout", "120")
    res["AnysatNoLiveWorkers: workers stopped -> firing, s"] = round(time.monotonic() - t0, 1)
    t0 = time.monotonic()
    stack.run_compose("start", "worker")
    stack.prove("--wait-alert", "AnysatNoLiveWorkers", "--state", "inactive", "--timeout", "120")
    res["AnysatNoLiveWorkers: workers started -> inactive, s"] = round(time.monotonic() - t0, 1)
    stack.wait("the gateway ready again", lambda: stack.gateway.get("/readyz").status_code == 200, 60)
    stack.wait("2 worker targets up", lambda: stack.workers_up(2), 60)


def phase_kill_worker(stack: Stack, req: Request, res: dict[str, Any]) -> None:
    victim = stack.containers("worker")[0]
    before = stack.inspect(victim)
    ip = next(iter(before["NetworkSettings"]["Networks"].values()))["IPAddress"]
    started = f'process_start_time_seconds{{job="anysat-worker",instance="{ip}:9100"}}'
    old_start = max(float(s["value"][1]) for s in stack.query(started))
    with Load(req, stack.gateway_url, total=500, concurrency=8, retry=True) as load:
        stack.wait("100 requests answered", lambda: load.done >= 100, 120, every=0.2)
        # `docker kill` is recorded by the engine as a manual stop, which restart policies honour (the container
        # stays down); a crash is what the policy is for, so the container's process is killed as a crash is.
        sh("kill", "-9", str(before["State"]["Pid"]))
        t_kill = time.monotonic()
        stack.wait("the killed worker restarted by its policy", lambda: (
            (s := stack.inspect(victim))["RestartCount"] > before["RestartCount"] and s["State"]["Running"]), 120, 0.2)
        t_restart = time.monotonic() - t_kill
        # The new process, seen by Prometheus: a later process start time on the worker's address (the restarted
        # container keeps its address; if it got another one, DNS discovery finds that and the query below fails).
        stack.wait("Prometheus scraping the restarted worker", lambda: any(
            float(s["value"][1]) > old_start + 0.5 for s in stack.query(started)), 120, 0.5)
        t_scraped = time.monotonic() - t_kill
        load.join()
    res["kill -9 worker under load: requests, lost"] = f"{load.done}, {load.lost}"
    res["  latency p50 / p95 / max, s"] = load.latency_summary()
    res["  worker container restarted by its policy after, s"] = round(t_restart, 1)
    res["  Prometheus scrapes the new process after, s"] = round(t_scraped, 1)
    check(load.done >= 500 and load.lost == 0, f"{load.lost} of {load.done} requests lost: {load.failures[:3]}")


def phase_restart_redis(stack: Stack, req: Request, res: dict[str, Any]) -> None:
    others = {c: stack.inspect(c)["State"]["StartedAt"] for s in ("gateway", "worker") for c in stack.containers(s)}
    redis = stack.containers("redis")[0]
    with Load(req, stack.gateway_url, total=10**6, concurrency=4, retry=False) as load:
        stack.wait("50 requests answered", lambda: load.done >= 50, 120, every=0.2)
        # A restart with the container held down a few seconds (stop, start), so requests do arrive meanwhile.
        sh(DOCKER, "stop", "-t", "5", redis)
        t_down = time.monotonic()
        time.sleep(5)
        t_up = time.monotonic()
        sh(DOCKER, "start", redis)
        t_back = time.monotonic()
        t_ok = stack.wait("200s again after the Redis restart", lambda: load.ok_since(t_back) >= 10, 120, 0.2)
        load.stop()
    codes = load.status_counts()
    # Fast: a request that arrives while Redis is away is refused at once (ANYSAT_REDIS_TIMEOUT_S), not queued.
    during = [lat for code, start, lat in load.latencies if code == 503 and t_down <= start <= t_up]
    in_flight = [lat for code, start, lat in load.latencies if code != 200 and start < t_down]
    res["Redis restart under load: answers by status"] = ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))
    res["  Redis away (docker stop, 5 s, docker start), s"] = round(t_back - t_down, 1)
    res["  503s to requests sent while away: n, max s"] = f"{len(during)}, {max(during, default=0):.2f}"
    res["  10 x 200 again after Redis is back, s"] = round(t_ok, 1)
    check(len(during) > 0, f"no 503 to a request sent while Redis was down: {codes}")
    check(max(during) < 3, f"503s were not fast: the slowest took {max(during):.1f} s")
    check(max(in_flight, default=0) < 30, f"requests in flight when Redis went away hung: {max(in_flight):.0f} s")
    check(not set(codes) - {200, 503, 504}, f"unexpected statuses while Redis restarted: {codes}")
    after = {c: stack.inspect(c)["State"]["StartedAt"] for c in others}
    check(after == others, "a gateway or worker container was restarted to recover from the Redis restart")
    res["  gateway/worker containers restarted"] = 0


def phase_scale(stack: Stack, res: dict[str, Any]) -> None:
    t0 = time.monotonic()
    stack.run_compose("up", "-d", "--no-build", "--no-deps", "--no-recreate", "--scale", "worker=3", "worker")
    stack.wait("3 worker targets up in Prometheus", lambda: stack.workers_up(3), 120)
    res["scale workers to 3: targets up (DNS discovery), s"] = f"3, {time.monotonic() - t0:.1f}"
    res["Prometheus targets up (gateway, worker, redis)"] = ", ".join(
        str(sum(t["health"] == "up" for t in stack.targets(j))) for j in ("anysat-gateway", "anysat-worker", "redis"))


def run(args: argparse.Namespace) -> int:
    res: dict[str, Any] = json.loads(args.results.read_text()) if args.results.is_file() else {}
    stack = Stack(args.project, args.compose, args.gateway, args.prometheus)
    req = Request(inputs(ROOT / "build" / "e2e"))
    status = 0
    try:
        t0 = time.monotonic()
        stack.wait("the gateway ready", lambda: stack.gateway.get("/readyz").status_code == 200, 300)
        stack.wait("2 worker targets up", lambda: stack.workers_up(2), 120)
        res["stack ready (after compose up), s"] = round(time.monotonic() - t0 + args.up_seconds, 1)
        # The Redis restart comes before the dashboard proof: its 503s are what the error panels draw.
        for i, phase in enumerate((phase_requests, phase_restart_redis, phase_kill_worker, phase_dashboard_and_alert)):
            if i + 1 >= args.start:
                print(f"e2e: {phase.__name__}", flush=True)
                phase(stack, req, res)
        print("e2e: phase_scale", flush=True)
        phase_scale(stack, res)
    except Failed as e:
        res["FAILED"] = str(e)
        print(f"e2e: FAILED: {e}", file=sys.stderr)
        status = 1
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(res, indent=1))
    return status


def table(path: Path) -> int:
    res = json.loads(path.read_text())
    width = max(map(len, res))
    print(f"\n{'measured':<{width}}  value\n{'-' * width}  {'-' * 30}")
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    return 1 if "FAILED" in res else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--project", default="anysat-e2e")
    r.add_argument("--compose", default="docker-compose", help="docker-compose or 'docker compose'")
    r.add_argument("--gateway", default="http://127.0.0.1:18000")
    r.add_argument("--prometheus", default="http://127.0.0.1:19090")
    r.add_argument("--results", type=Path, default=ROOT / "build" / "e2e" / "results.json")
    r.add_argument("--start", type=int, default=1, help="first step to run (1-5; debugging only)")
    r.add_argument("--up-seconds", type=float, default=0.0, help="what `compose up` took, added to readiness")
    t = sub.add_parser("table")
    t.add_argument("results", type=Path)
    a = p.parse_args()
    return run(a) if a.cmd == "run" else table(a.results)


if __name__ == "__main__":
    sys.exit(main())
