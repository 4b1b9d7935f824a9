#!/usr/bin/env bash
# Fetches the emoji PNGs of npm's emoji-datasource-google (3,786 images, 64x64 RGBA; about 74 MB
# downloaded once) into DIR (default data/emoji), for training on a small RGB dataset:
#   bash scripts/emoji.sh data/emoji
#   echo '{"config": "rgb32", "data": "data/emoji", "steps": 2000}' > runs/emoji/spec.json
#   build/steer worker --dir runs/emoji
# (the worker resamples them to the model's 32x32, alpha over black).
set -euo pipefail
dir=${1:-data/emoji}
version=16.0.0
if [ -n "$(ls "$dir"/*.png 2>/dev/null | head -1)" ]; then
    echo "emoji: $dir already has the images"
    exit 0
fi
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "emoji-datasource-google@$version" >/dev/null)
tar -xzf "$tmp"/emoji-datasource-google-$version.tgz -C "$tmp" package/img/google/64
mv "$tmp"/package/img/google/64/*.png "$dir"/
echo "emoji: $(ls "$dir" | wc -l) images in $dir"
