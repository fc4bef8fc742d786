#!/usr/bin/env bash
# Installs the build into a temporary prefix and compiles the README's experiment snippet the way
# the README tells a user to: g++ -std=c++20 exp.cpp $(pkg-config --cflags --libs tensorbrain).
# Then runs it. So the pkg-config file, the installed headers and the README stay in step.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
meson install -C "$build" --destdir "$tmp/root" >/dev/null
prefix=$(meson introspect "$build" --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "prefix"))')
pcdir=$(dirname "$(find "$tmp/root" -name tensorbrain.pc | head -1)")
# the README's first C++ block is the experiment
awk '/^```cpp/ {on = 1; next} /^```/ {if (on) exit} on' "$src/README.md" >"$tmp/exp.cpp"
[[ -s $tmp/exp.cpp ]] || { echo "FAIL: no C++ snippet in README.md"; exit 1; }
# pointing prefix at the temporary root gives the flags an installed copy would have
pc() { PKG_CONFIG_PATH=$pcdir pkg-config --define-variable=prefix="$tmp/root$prefix" "$@" tensorbrain; }
g++ -std=c++20 "$tmp/exp.cpp" $(pc --cflags --libs) -o "$tmp/exp"
# no LD_LIBRARY_PATH and no ldconfig: the rpath from the pkg-config file finds the library
(cd "$tmp" && env -u LD_LIBRARY_PATH ./exp)
[[ -s $tmp/net.safetensors ]] || { echo "FAIL: the README snippet did not write net.safetensors"; exit 1; }
echo "install_pkgconfig: installed under $prefix (in a temporary root), README snippet built with pkg-config and ran without ldconfig"
