#!/usr/bin/env bash
# Builds a small Linux kernel for minivisor from Debian's linux-source package (see minivisor.config).
# Output: $CACHE/<hash>/{bzImage,vmlinux,config}; the hash covers the source tarball, the config
# fragment and this script, so a repeated run reuses the cached build. Prints the bzImage path.
# The build is CPU-heavy and runs at the lowest priority: nice -n 19 make -j$(nproc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MINIVISOR_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minivisor/linux}
tarball=$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -1 || true)
[ -n "$tarball" ] || { echo "no /usr/src/linux-source-*.tar.xz: run Guests/linux/install-deps.sh first" >&2; exit 2; }
key=$( { stat -c '%n %s %Y' "$tarball"; cat "$here/minivisor.config" "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
out=$cache/kernel-$key
if [ -f "$out/bzImage" ] && [ -f "$out/vmlinux" ]; then echo "$out/bzImage"; exit 0; fi
src=$cache/src/$(basename "$tarball" .tar.xz)
if [ ! -f "$src/Makefile" ]; then
    echo "unpacking $tarball into $src" >&2
    mkdir -p "$cache/src"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xf "$tarball" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
fi
build=$cache/build-$key
mkdir -p "$build"
make -s -C "$src" O="$build" ARCH=x86_64 allnoconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$here/minivisor.config" >/dev/null
make -s -C "$src" O="$build" ARCH=x86_64 olddefconfig >&2
# Every line of the fragment must have survived olddefconfig (a dropped option means a missing dependency).
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue;; esac
    opt=${line%%=*}; val=${line#*=}
    if [ "$val" = n ]; then
        grep -q "^$opt=" "$build/.config" && echo "warning: $opt is set although minivisor.config turns it off" >&2
    else
        grep -qx "$line" "$build/.config" || echo "warning: $line did not survive olddefconfig" >&2
    fi
done < "$here/minivisor.config"
echo "building the kernel in $build (nice -n 19 make -j$(nproc)); this takes a while" >&2
nice -n 19 make -s -C "$src" O="$build" ARCH=x86_64 -j"$(nproc)" bzImage >&2
mkdir -p "$out.tmp"
cp "$build/arch/x86/boot/bzImage" "$build/vmlinux" "$build/.config" "$out.tmp/"
mv "$out.tmp/.config" "$out.tmp/config"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/bzImage"
