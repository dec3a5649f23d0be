#!/usr/bin/env bash
# Builds the minivisor test initramfs (a gzip'd newc cpio) from Debian's busybox-static and ./init.
# Output: $CACHE/initramfs-<hash>.cpio.gz, keyed by busybox's version and the init script; prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${MINIVISOR_LINUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/minivisor/linux}
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "no static busybox at $busybox: run Guests/linux/install-deps.sh (busybox-static) first" >&2; exit 2; }
key=$( { dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || sha256sum "$busybox"; cat "$here/init" "$here/build-initramfs.sh"; } | sha256sum | cut -c1-16)
out=$cache/initramfs-$key.cpio.gz
if [ -f "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cp "$here/init" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --owner 0:0 --quiet | gzip -9 -n) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
