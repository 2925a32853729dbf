#!/usr/bin/env bash
# A Docker Engine on this machine, idempotently: install Debian's docker.io + docker-compose + debootstrap if
# missing, start dockerd (its defaults: iptables on, which the engine's DNS for service names needs) if no
# daemon answers, and wait for `docker info`. The daemon started here logs to build/docker/dockerd.log and
# its PID is in build/docker/dockerd.pid; `bash deploy/docker/engine.sh stop` stops only that one.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE=build/docker
mkdir -p "$STATE"
DOCKER=/usr/bin/docker   # Debian's client, same API version as its daemon (a newer client may sit in /usr/local/bin)
[[ -x $DOCKER ]] || DOCKER=$(command -v docker || true)

if [[ ${1:-} == stop ]]; then
  if [[ -f $STATE/dockerd.pid ]] && kill -0 "$(cat "$STATE/dockerd.pid")" 2>/dev/null; then
    pid=$(cat "$STATE/dockerd.pid"); kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "engine: stopped dockerd (pid $pid)"
  fi
  rm -f "$STATE/dockerd.pid"; exit 0
fi

SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "engine: installing docker.io docker-compose debootstrap (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
  DOCKER=/usr/bin/docker
fi

if ! $DOCKER info >/dev/null 2>&1; then
  echo "engine: starting dockerd (log: $STATE/dockerd.log)"
  # setsid: the daemon outlives this script (and the test's shell), like a service would.
  $SUDO setsid dockerd >"$STATE/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$STATE/dockerd.pid"
  for _ in $(seq 120); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.5; done
fi
if ! $DOCKER info >/dev/null 2>&1; then
  echo "engine: dockerd did not answer within 60 s; last log lines:" >&2
  tail -20 "$STATE/dockerd.log" >&2 || true
  exit 1
fi
echo "engine: $($DOCKER version --format 'server {{.Server.Version}}, client {{.Client.Version}}')," \
     "compose $(docker-compose version --short 2>/dev/null || echo none)"
