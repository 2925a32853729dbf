#!/usr/bin/env bash
# The deployment, end to end, from a clean checkout (what .ci/run runs after the unit suite):
#   1. a Docker Engine (deploy/docker/engine.sh: Debian's docker.io, dockerd started if none answers);
#   2. the images: stand-in bases from Debian packages (deploy/docker/base.sh: no registry here), the wheelhouse
#      (deploy/docker/wheelhouse.sh) and the anysat image built from it with no network (cached between runs);
#   3. `compose up` of everything but Grafana under its own project name, then deploy/e2e.py over 127.0.0.1:
#      requests, the dashboard proof, the NoLiveWorkers alert round trip, a worker killed under load, Redis
#      restarted under load, workers scaled to 3;
#   4. `down -v`, then a check that no container, volume or network of the project is left (and the engine
#      stopped if this script started it). Then the table of what was measured.
# Fails (exit 1) at the first step that does; nothing is skipped. Ports: GATEWAY_PORT (18000), PROMETHEUS_PORT
# (19090), on 127.0.0.1. KEEP_ENGINE=1 leaves a dockerd this script started running.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROJECT=${PROJECT:-anysat-e2e}
export GATEWAY_PORT=${GATEWAY_PORT:-18000} PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker
OUT=build/e2e
mkdir -p "$OUT"
RESULTS=$OUT/results.json
rm -f "$RESULTS"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
declare -A T
T0=$(now)

t=$(now)
engine_was_up=0; $DOCKER info >/dev/null 2>&1 && engine_was_up=1
bash deploy/docker/engine.sh
T[engine]=$(since "$t")

# The host's Python, for the wheelhouse and the driver: the project's .venv (made by scripts/setup.sh).
if [[ ! -x .venv/bin/python ]]; then bash scripts/setup.sh; fi
PY=.venv/bin/python
"$PY" -c "import httpx, numpy, rasterio" || { echo "test: .venv lacks httpx/numpy/rasterio" >&2; exit 1; }

t=$(now); bash deploy/docker/base.sh; T[base]=$(since "$t")
t=$(now); bash deploy/docker/wheelhouse.sh; T[wheelhouse]=$(since "$t")
eval "$(bash deploy/docker/base.sh --print-env | sed 's/^/export /')"
export ANYSAT_IMAGE=anysat-serve:e2e
t=$(now)
DOCKER_BUILDKIT=0 $DOCKER build -q --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$ANYSAT_IMAGE" . > "$OUT/build.log" 2>&1 \
  || { tail -30 "$OUT/build.log" >&2; echo "test: docker build failed" >&2; exit 1; }
T[image]=$(since "$t")
$DOCKER image prune -f --filter "label!=org.anysat.recipe" >/dev/null 2>&1 || true   # dangling layers of old builds

# Compose: Debian's docker-compose 1.29 here; `docker compose` (v2) where that is what is installed.
if [[ -n ${COMPOSE:-} ]]; then :
elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
else COMPOSE="docker compose"; fi
DC() { $COMPOSE -p "$PROJECT" "$@"; }

leftovers() {
  local f="label=com.docker.compose.project=$PROJECT"
  echo "$($DOCKER ps -aq --filter "$f" | wc -l) containers, $($DOCKER volume ls -q --filter "$f" | wc -l) volumes," \
       "$($DOCKER network ls -q --filter "$f" | wc -l) networks"
}
teardown() {
  local rc=$? t left
  t=$(now)
  DC down -v --remove-orphans --timeout 20 > "$OUT/down.log" 2>&1 || cat "$OUT/down.log" >&2
  left=$(leftovers)
  if [[ -f $RESULTS ]]; then
    "$PY" - "$RESULTS" "$left" "$(since "$t")" "$(since "$T0")" <<'EOF'
import json, sys
path, left, secs, total = sys.argv[1:]
r = json.load(open(path))
r["teardown (down -v): left behind, s"] = f"{left}, {secs}"
r["deploy/test.sh in all (builds included), s"] = float(total)
json.dump(r, open(path, "w"), indent=1)
EOF
  fi
  if [[ $left != "0 containers, 0 volumes, 0 networks" ]]; then echo "test: left behind after down -v: $left" >&2; rc=1; fi
  if [[ $engine_was_up == 0 && -z ${KEEP_ENGINE:-} ]]; then bash deploy/docker/engine.sh stop; fi
  [[ -f $RESULTS ]] && { "$PY" deploy/e2e.py table "$RESULTS" || rc=1; }
  if [[ $rc == 0 ]]; then echo "deploy/test.sh: PASSED"; else echo "deploy/test.sh: FAILED" >&2; fi
  exit $rc
}
trap teardown EXIT

[[ $(leftovers) == "0 containers, 0 volumes, 0 networks" ]] || DC down -v --remove-orphans --timeout 10 >/dev/null 2>&1
t=$(now)
DC up -d --no-build redis export gateway worker redis-exporter prometheus 2>&1 | tail -20
T[up]=$(since "$t")

sizes=$($DOCKER image inspect --format '{{.Size}}' "$ANYSAT_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE" "$REDIS_EXPORTER_IMAGE" \
        | awk '{printf "%s%.0f", (NR>1?" / ":""), $1/1e6}')
cuda=$($DOCKER run --rm --entrypoint sh "$ANYSAT_IMAGE" -c \
       'find / -xdev \( -name "libcudart*" -o -name "libcublas*" -o -name "libcudnn*" \) 2>/dev/null | wc -l')
"$PY" - "$RESULTS" <<EOF
import json, sys
json.dump({
  "engine up, s": ${T[engine]},
  "stand-in base images (cached by recipe), s": ${T[base]},
  "wheelhouse, s": ${T[wheelhouse]},
  "anysat image build (from the wheelhouse), s": ${T[image]},
  "image sizes MB: anysat (CPU) / redis / prometheus / exporter": "$sizes",
  "CUDA libraries in the anysat image": $cuda,
  "compose up (incl. the export pre-warm), s": ${T[up]},
}, open(sys.argv[1], "w"), indent=1)
EOF
[[ $cuda == 0 ]] || { echo "test: CUDA libraries in the CPU image" >&2; exit 1; }

"$PY" deploy/e2e.py run --project "$PROJECT" --compose "$COMPOSE" --gateway "http://127.0.0.1:$GATEWAY_PORT" \
  --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --results "$RESULTS" --up-seconds "${T[up]}" \
  || { DC ps >&2; DC logs --tail 30 gateway worker export >&2 2>&1 | tail -80 >&2; exit 1; }

if [[ -f deploy/grafana/render.py ]]; then
  "$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install -q "matplotlib>=3.8"
  "$PY" deploy/grafana/render.py --url "http://127.0.0.1:$PROMETHEUS_PORT" --out docs/img/dashboard.png
fi
