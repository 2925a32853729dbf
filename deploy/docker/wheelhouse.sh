#!/usr/bin/env bash
# The wheelhouse: every wheel the image installs, made on the host into build/wheelhouse, so `docker build`
# needs no network (the Dockerfile installs from it with --no-index when it is in the build context).
#   torch==2.13.0 CPU (the +cpu wheel: checked below, and no nvidia-* wheel may be in the house),
#   the project's dependencies with extras [serve,cpu] (an extra pyproject.toml lacks is ignored by pip),
#   and the project itself as a wheel.
# Dependencies are rebuilt only when pyproject.toml changes (a stamp holds its hash); the project wheel always.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=build/wheelhouse
TORCH=${TORCH_VERSION:-2.13.0}
EXTRAS=${ANYSAT_EXTRAS:-serve,cpu}
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the image runs Python 3.11: build its wheels with 3.11"'
mkdir -p "$OUT"
started=$(date +%s)
# setuptools' license-table deprecation banner and pip's notes on this machine's empty local indexes
NOISE='BuildBackendWarning|Please use a simple|By 20[0-9][0-9]-|or your builds will|See https://packaging|corresp\(|is ignored: it is neither|^[[:space:]]*(!!|\*+)?[[:space:]]*$'
stamp=$( (cat pyproject.toml deploy/docker/marker_deps.py; echo "$TORCH $EXTRAS ${TARGET_PYTHON:-3.11.2}") | sha256sum | cut -c1-16)
if [[ $(cat "$OUT/.deps-stamp" 2>/dev/null) != "$stamp" ]]; then
  echo "wheelhouse: dependencies (torch==$TORCH CPU, .[$EXTRAS]) -> $OUT"
  # Where torch's +cpu wheel is not on local disk (pip's find-links here), set
  # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu: never let PyPI's CUDA build in.
  index=(); [[ -n ${TORCH_INDEX_URL:-} ]] && index=(--extra-index-url "$TORCH_INDEX_URL")
  rm -rf "$OUT/deps" "$OUT/project"
  "$PY" -m pip wheel -q --wheel-dir "$OUT/deps" "${index[@]}" "torch==$TORCH" ".[${EXTRAS}]" \
      2> >(grep -vE "$NOISE" >&2 || true)
  # Markers were evaluated for this Python; the stand-in base runs Debian's 3.11.2 (TARGET_PYTHON), where a few
  # more wheels are needed (redis: async-timeout below 3.11.3). Fetch those too.
  mapfile -t more < <("$PY" deploy/docker/marker_deps.py "$OUT/deps" "${TARGET_PYTHON:-3.11.2}")
  if [[ ${#more[@]} -gt 0 ]]; then
    echo "wheelhouse: + ${more[*]} (for Python ${TARGET_PYTHON:-3.11.2})"
    "$PY" -m pip wheel -q --wheel-dir "$OUT/deps" "${more[@]}" 2> >(grep -vE "$NOISE" >&2 || true)
  fi
  echo "$stamp" > "$OUT/.deps-stamp"
else
  echo "wheelhouse: dependencies up to date (stamp $stamp)"
fi
# The project apart from its dependencies: a code change then rebuilds one small Docker layer, not torch's.
rm -rf "$OUT/project"; mkdir -p "$OUT/project"
mv "$OUT"/deps/anysat_serve-*.whl "$OUT/project/" 2>/dev/null || \
  "$PY" -m pip wheel -q --no-deps --wheel-dir "$OUT/project" . 2> >(grep -vE "$NOISE" >&2 || true)
rm -rf build/lib build/bdist.* ./*.egg-info/SOURCES.txt.bak 2>/dev/null || true
# Torch must be the CPU build: no CUDA wheels, no +cu local version.
torch_whl=$(ls "$OUT"/deps/torch-"$TORCH"*.whl)
[[ $torch_whl == *+cpu-* ]] || { echo "wheelhouse: $torch_whl is not the +cpu build" >&2; exit 1; }
if ls "$OUT/deps" | grep -qiE '^(nvidia|triton)[-_]'; then
  echo "wheelhouse: CUDA wheels found: $(ls "$OUT/deps" | grep -iE '^(nvidia|triton)[-_]' | tr '\n' ' ')" >&2; exit 1
fi
ls "$OUT"/project/anysat_serve-*.whl > /dev/null
echo "wheelhouse: $(ls "$OUT"/deps/*.whl | wc -l) dependency wheels + $(ls "$OUT"/project), $(du -sm "$OUT" | cut -f1) MB, $(basename "$torch_whl")," \
     "in $(( $(date +%s) - started )) s"
