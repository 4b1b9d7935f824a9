#!/usr/bin/env bash
# Installs the Debian packages steer builds, tests and benchmarks with; quiet when all are there.
set -euo pipefail
pkgs=(build-essential libdnnl-dev liblapacke-dev libopenblas-dev libjansson-dev libpng-dev
      zlib1g-dev libcmocka-dev dataset-fashion-mnist python3-torch python3-numpy
      libuv1-dev libwebsockets-dev libwebsockets-evlib-uv libmsgpack-dev libsqlite3-dev libssl-dev
      python3-websockets python3-msgpack python3-pil chromium nodejs npm libopenmpi-dev openmpi-bin)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The image may carry Node.js from elsewhere (nodesource): only ask apt for npm when node lacks it.
if command -v node >/dev/null && command -v npm >/dev/null; then
    kept=()
    for p in "${missing[@]}"; do [ "$p" = nodejs ] || [ "$p" = npm ] || kept+=("$p"); done
    missing=("${kept[@]+"${kept[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "deps: done"
fi
# npm packages (package-lock.json): msgpack for the web page, ws and playwright-core for the tests.
cd "$(dirname "$0")/.."
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "deps: npm ci"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
