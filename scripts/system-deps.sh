#!/usr/bin/env bash
# System programs some tests run for real (docs/testing.md): Prometheus and promtool (the alert rules' unit tests,
# the dashboard proof) and the Redis exporter. Installed from Debian's packages when missing and apt is usable
# (root); otherwise those tests are skipped, saying why. Safe to rerun: nothing happens once they are there.
set -euo pipefail
need=()
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-redis-exporter >/dev/null || need+=(prometheus-redis-exporter)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: ${need[*]} missing and apt-get not usable here; their tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
