#!/usr/bin/env bash
# Build the pete-serve image (`make image` runs this): docker when its daemon answers, else podman
# (deploy/image/prepare.sh installs and sets it up where that is possible: root with apt-get).
#
#   deploy/image/build.sh [--report FILE] [--target slim] [TAG]   TAG defaults to pete-serve:<project version>
#                                                                 (-slim appended for the slim target)
#
# Environment: PETE_IMAGE_ENGINE=docker|podman forces an engine; TORCH_PIP_ARGS overrides where pip
# finds torch (the Dockerfile's default is the PyTorch CPU index). Machine-specific workarounds live
# here, not in the Dockerfile:
#   - the PyTorch index unreachable but torch 2.13.0's CPU wheel in a local pip find-links folder:
#     that folder is served on 127.0.0.1 for the build (which then uses the host network);
#   - a CA bundle in pip's configuration (a host that intercepts TLS): mounted into the build and
#     passed as PIP_CERT (podman).
# --report FILE writes {engine, tag, size_bytes, build_seconds, base_image_bytes, layer_bytes (podman)} as JSON; --target slim builds the
# torch-free ONNX Runtime image (the Dockerfile's slim stage) instead of the default runtime one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

report=""
target=""
while [ $# -gt 0 ]; do
  case "$1" in
    --report) report="$2"; shift 2 ;;
    --target) target="$2"; shift 2 ;;
    *) break ;;
  esac
done
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
tag="${1:-pete-serve:$version${target:+-$target}}"

engine="${PETE_IMAGE_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
if [ "$engine" = podman ]; then
  bash deploy/image/prepare.sh >/dev/null
fi
args=(build --tag "$tag" --file Dockerfile)
[ -n "$target" ] && args+=(--target "$target")
[ "$engine" = podman ] && args+=(--format docker --pull=never)   # docker format keeps HEALTHCHECK

pip_setting() {  # $1: env var, $2: pip config key; first value found
  local v="${!1:-}"
  [ -n "$v" ] || v="$(python3 -m pip config get "$2" 2>/dev/null | head -1 || true)"
  echo "$v"
}

server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${TORCH_PIP_ARGS:-}" ] && ! curl -fsS --max-time 5 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
  wheel=""
  for d in $(pip_setting PIP_FIND_LINKS global.find-links); do
    for w in "$d"/torch-2.13.0+cpu-*.whl; do [ -f "$w" ] && wheel="$w" && break 2; done
  done
  if [ -n "$wheel" ]; then
    # a fixed port when free: the port is part of a build argument, and a changed argument would
    # invalidate the cached torch + lock layers
    port="$(python3 -c 'import socket, sys
for p in (int(sys.argv[1]), 0):
    try:
        s = socket.socket(); s.bind(("127.0.0.1", p)); print(s.getsockname()[1]); break
    except OSError:
        pass' "${TORCH_WHEEL_PORT:-38117}")"
    python3 -m http.server --bind 127.0.0.1 --directory "$(dirname "$wheel")" "$port" >/dev/null 2>&1 &
    server_pid=$!
    TORCH_PIP_ARGS="--no-index --find-links http://127.0.0.1:$port/"
    args+=(--network host)
    echo "torch: the PyTorch index is unreachable; serving $(basename "$wheel") from 127.0.0.1:$port"
  else
    echo "WARNING: the PyTorch CPU index is unreachable and no local torch 2.13.0 CPU wheel was found" >&2
  fi
fi
[ -n "${TORCH_PIP_ARGS:-}" ] && args+=(--build-arg "TORCH_PIP_ARGS=$TORCH_PIP_ARGS")

cert="$(pip_setting PIP_CERT global.cert)"
if [ "$engine" = podman ] && [ -n "$cert" ] && [ -f "$cert" ]; then
  args+=(--volume "$cert:/run/pete-build-ca.crt:ro" --build-arg PIP_CERT=/run/pete-build-ca.crt)
fi

old="$("$engine" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
start=$(date +%s)
echo "$engine ${args[*]} ."
"$engine" "${args[@]}" .
new="$("$engine" image inspect --format '{{.Id}}' "$tag")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then  # the tag's previous image, now untagged: drop it
  "$engine" rmi "$old" >/dev/null 2>&1 || true
fi
seconds=$(( $(date +%s) - start ))
size="$("$engine" image inspect --format '{{.Size}}' "$tag")"
base_size="$("$engine" image inspect --format '{{.Size}}' python:3.11-slim 2>/dev/null || echo 0)"
history="$("$engine" history --format json "$tag" 2>/dev/null || echo '[]')"
echo "built $tag with $engine in ${seconds}s: $(( size / 1000000 )) MB"
if [ -n "$report" ]; then
  python3 - "$report" "$engine" "$("$engine" --version)" "$tag" "$size" "$seconds" "$base_size" "$history" <<'PY'
import json, sys
path, engine, version, tag, size, seconds, base, history = sys.argv[1:]
try:  # podman: one JSON list, newest layer first, sizes in bytes (docker prints "187MB": not recorded)
    layers = [int(layer["size"]) for layer in reversed(json.loads(history)) if int(layer["size"]) > 0]
except (ValueError, KeyError, TypeError):
    layers = None
report = {"engine": engine, "engine_version": version, "tag": tag, "size_bytes": int(size),
          "build_seconds": int(seconds), "base_image_bytes": int(base)}
if layers:
    report["layer_bytes"] = layers  # the non-empty layers, oldest first
json.dump(report, open(path, "w"), indent=2)
open(path, "a").write("\n")
PY
fi
