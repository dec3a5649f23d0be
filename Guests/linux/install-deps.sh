#!/usr/bin/env bash
# Installs the Debian packages that Guests/linux needs (kernel source and build tools, busybox-static,
# cpio), if any are missing. Only `make linux` / `make linux-test` run this, so `make test` stays fast.
set -euo pipefail
packages=(linux-source busybox-static cpio flex bison bc libelf-dev libssl-dev xz-utils gcc make)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
