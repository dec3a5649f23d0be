#!/usr/bin/env bash
# Installs the Debian packages that Guests/linux needs (kernel source and build tools, busybox-static,
# cpio), if any are missing. Only `make linux` / `make linux-test` run this, so `make test` stays fast.
set -euo pipefail
packages=(linux-source busybox-static cpio flex bison bc libelf-dev libssl-dev xz-utils gcc make)
"$(dirname "$0")/../../scripts/install-deps.sh" "${packages[@]}"
