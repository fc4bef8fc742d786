#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main job: the training example on the bundled
# default data. Extra arguments go to the example (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
[[ -d /usr/local/cuda/bin ]] && export PATH="/usr/local/cuda/bin:$PATH"
build=${TB_BUILD_DIR:-build}
if [[ ! -f $build/build.ninja ]]; then meson setup "$build" | tail -n 25; fi
ninja -C "$build" examples/train_fashion_mnist
"$build/examples/train_fashion_mnist" "$@"
