#!/usr/bin/env bash
# Installs the Debian packages minivisor needs to build and test, if any are missing; packages given as
# arguments are installed instead of those (Guests/linux/install-deps.sh uses this).
# The Swift toolchain itself is expected on PATH.
set -euo pipefail
packages=(libelf-dev liblzma-dev zlib1g-dev libzstd-dev libpng-dev libseccomp-dev libvncserver-dev libzydis-dev libopenblas0
          pkg-config gcc make binutils gdb time vncsnapshot libjpeg-turbo-progs acpica-tools)
# gdb: the gdb stub test; time: the RSS test; vncsnapshot, djpeg: the VNC test; acpica-tools: iasl and acpiexec
# check the ACPI tables; libzydis-dev: the instruction emulator's decoder; libopenblas0: SGEMM
[ $# -gt 0 ] && packages=("$@")
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
[ $# -gt 0 ] || command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift toolchain (swift.org) first" >&2; exit 1; }
