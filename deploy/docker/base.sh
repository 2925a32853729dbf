#!/usr/bin/env bash
# Stand-in base images built from Debian packages, for machines that reach a Debian mirror but no container
# registry. Each is a bookworm minbase rootfs made by debootstrap with a few packages, then `docker import`ed:
#
#   anysat/python:bookworm          python3 (3.11) + venv/pip      -> the Dockerfile's BASE_IMAGE
#   anysat/redis:bookworm           redis-server (+ redis-cli)      -> REDIS_IMAGE
#   anysat/prometheus:bookworm      prometheus + promtool           -> PROMETHEUS_IMAGE
#   anysat/redis-exporter:bookworm  prometheus-redis-exporter       -> REDIS_EXPORTER_IMAGE
#
# Each image carries a label with the hash of its recipe (suite, mirror, packages, settings, this file's recipe
# lines); an image whose label matches is kept, so a second run costs seconds.
#   bash deploy/docker/base.sh [python|redis|prometheus|redis-exporter ...]    (default: all four)
#   bash deploy/docker/base.sh --print-env     # the REDIS_IMAGE=... lines deploy/test.sh exports
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=/usr/bin/docker; [[ -x $DOCKER ]] || DOCKER=docker
SUITE=bookworm
# The mirror apt uses on this machine (first URIs: / deb line of its sources), else Debian's CDN.
MIRROR=$(sed -n 's/^URIs: *\(\S*\/debian\)$/\1/p; s/^deb \+\(\S*\/debian\) .*/\1/p' \
         /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=$PWD/build/debootstrap-cache
LABEL=org.anysat.recipe

# name -> packages | image changes (Dockerfile instructions applied at import)
declare -A PACKAGES=(
  [python]="python3 python3-venv ca-certificates"
  [redis]="redis-server"
  [prometheus]="prometheus"
  [redis-exporter]="prometheus-redis-exporter"
)
declare -A CHANGES=(
  [python]='ENV LANG=C.UTF-8|CMD ["python3"]'
  [redis]='EXPOSE 6379|CMD ["redis-server", "--protected-mode", "no"]'
  [prometheus]='USER nobody|WORKDIR /prometheus|EXPOSE 9090|ENTRYPOINT ["/bin/prometheus"]|CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
  [redis-exporter]='USER nobody|EXPOSE 9121|ENTRYPOINT ["/redis_exporter"]'
)
# Paths the official images have, so compose files written for them run unchanged on the stand-ins.
declare -A SETUP=(
  [python]=''
  [redis]='mkdir -p data && chmod 777 data'
  [prometheus]='mkdir -p prometheus && chown 65534:65534 prometheus'   # /bin/prometheus: bookworm merges /bin into /usr/bin
  [redis-exporter]='ln -s /usr/bin/prometheus-redis-exporter redis_exporter'
)

recipe_hash() {
  printf '%s\n' "$SUITE" "$MIRROR" "${PACKAGES[$1]}" "${CHANGES[$1]}" "${SETUP[$1]}" "v2" | sha256sum | cut -c1-16
}
image_of() { echo "anysat/$1:$SUITE"; }

if [[ ${1:-} == --print-env ]]; then
  echo "BASE_IMAGE=$(image_of python)"
  echo "REDIS_IMAGE=$(image_of redis)"
  echo "PROMETHEUS_IMAGE=$(image_of prometheus)"
  echo "REDIS_EXPORTER_IMAGE=$(image_of redis-exporter)"
  exit 0
fi

build_one() {
  local name=$1 image hash have root started
  image=$(image_of "$name"); hash=$(recipe_hash "$name")
  have=$($DOCKER image inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null || true)
  if [[ $have == "$hash" ]]; then
    echo "base: $image up to date (recipe $hash)"; return
  fi
  started=$(date +%s)
  root=$(mktemp -d "${TMPDIR:-/tmp}/anysat-rootfs-$name.XXXX")
  mkdir -p "$CACHE"
  echo "base: debootstrap $SUITE minbase + ${PACKAGES[$name]} from $MIRROR -> $image"
  if ! debootstrap --variant=minbase --cache-dir="$CACHE" --include="${PACKAGES[$name]// /,}" \
       "$SUITE" "$root" "$MIRROR" > "build/debootstrap-$name.log" 2>&1; then
    tail -20 "build/debootstrap-$name.log" >&2; rm -rf "$root"; echo "base: debootstrap failed for $name" >&2
    return 1
  fi
  # Slim the rootfs: what an image never reads (docs, man pages, apt lists, caches).
  rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
         "$root"/var/log/* "$root"/tmp/*
  (cd "$root" && eval "${SETUP[$name]:-true}")
  local args=(--change "LABEL $LABEL=$hash")
  IFS='|' read -ra lines <<< "${CHANGES[$name]}"
  for line in "${lines[@]}"; do args+=(--change "$line"); done
  tar -C "$root" -c . | $DOCKER import "${args[@]}" - "$image" > /dev/null
  rm -rf "$root"
  echo "base: built $image in $(( $(date +%s) - started )) s," \
       "$($DOCKER image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}

command -v debootstrap >/dev/null || { echo "base: debootstrap missing (bash deploy/docker/engine.sh installs it)" >&2; exit 1; }
mkdir -p build
total=$(date +%s)
names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=(python redis prometheus redis-exporter)
for n in "${names[@]}"; do
  [[ -n ${PACKAGES[$n]:-} ]] || { echo "base: unknown image $n (python, redis, prometheus, redis-exporter)" >&2; exit 2; }
  build_one "$n"
done
echo "base: ${#names[@]} image(s) ready in $(( $(date +%s) - total )) s"
