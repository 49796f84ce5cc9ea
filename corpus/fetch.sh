#!/usr/bin/env bash
# Fetch the pinned real corpus: Debian's ppc64el kernel image package (and busybox-static for the
# module-loading initramfs), extracted with dpkg -x into a cache outside git.
#
# Idempotent: a complete extraction is marked with a stamp file and not fetched again.
# apt-get is pointed at a private lists directory with an architecture override, so the host's
# apt state (amd64) is left untouched and no foreign architecture is added to dpkg.
set -euo pipefail

KERNEL_PKG=linux-image-6.1.0-50-powerpc64le
KERNEL_VER=6.1.176-1
BUSYBOX_PKG=busybox-static

CACHE=${MCOUNTRW_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/mcountrw/corpus}
STAMP="$CACHE/.complete-$KERNEL_PKG-$KERNEL_VER"
if [ -f "$STAMP" ]; then
    echo "$CACHE"
    exit 0
fi

mkdir -p "$CACHE/lists/partial" "$CACHE/debs" "$CACHE/root"
APT=(apt-get -q
     -oAPT::Architecture=ppc64el -oAPT::Architectures=ppc64el
     -oDir::State::Lists="$CACHE/lists" -oDir::Cache::Archives="$CACHE/debs"
     -oDebug::NoLocking=1)
# A mirror mid-sync can fail one index (seen with bookworm-security); the download below is the real check.
"${APT[@]}" update >&2 || "${APT[@]}" update >&2 || true
cd "$CACHE/debs"
"${APT[@]}" download "$KERNEL_PKG=$KERNEL_VER" "$BUSYBOX_PKG" >&2
for deb in "$CACHE"/debs/*.deb; do
    dpkg -x "$deb" "$CACHE/root"
done
touch "$STAMP"
echo "$CACHE"
