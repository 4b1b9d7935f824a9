#!/usr/bin/env bash
# Installs the Debian packages steer builds, tests and benchmarks with; quiet when all are there.
set -euo pipefail
pkgs=(build-essential libdnnl-dev liblapacke-dev libopenblas-dev libjansson-dev libpng-dev
      zlib1g-dev libcmocka-dev dataset-fashion-mnist python3-torch python3-numpy)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "deps: done"
