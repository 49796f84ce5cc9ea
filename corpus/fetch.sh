#!/usr/bin/env bash
# Fetch the pinned real corpus: Debian's ppc64el kernels of the three ftrace generations (and
# busybox-static for the module-loading initramfs), extracted with dpkg -x into a cache outside git.
#
#   bookworm  linux-image-6.1.0-50-powerpc64le 6.1.176-1            mprofile  (-pg -mprofile-kernel)
#   trixie    linux-image-6.12.107+deb13-powerpc64le 6.12.107-1     patchable (-fpatchable-function-entry=2)
#   sid       linux-binary-7.2.13+deb14-powerpc64le 7.2.13-1        ool       (out-of-line stubs)
#             linux-modules-7.2.13+deb14-powerpc64le 7.2.13-1       (linux-image-7.2... is a metapackage)
#
# Debian 12's 6.12, built by gcc 12, which fails the kernel's -fpatchable-function-entry check: a 6.12
# code base with mprofile sites (the generation follows the compiler as well as the version):
#   bookworm-security  linux-image-6.12.118+deb12-powerpc64le 6.12.118-1~deb12u1
#
# and the 6.12 and 7.2 kernels above built for 64k pages, a second configuration of each new generation
# (a guard against a tool that fits three binaries rather than the layouts):
#   trixie    linux-image-6.12.107+deb13-powerpc64le-64k 6.12.107-1
#   sid       linux-binary-7.2.13+deb14-powerpc64le-64k 7.2.13-1, linux-modules-…-64k 7.2.13-1
#
# and the source of the sid 7.2, for the one big-endian kernel (Debian's big-endian ppc64 is a ports
# architecture, out of reach), which corpus/build-be.sh builds from it at the end (~5 min):
#   sid       linux-source-7.2 7.2.13-1
#
# and, for this machine (amd64), Debian 13's cross gcc 14, the compiler that built the trixie 6.12: the
# tests compile the fixture sources with it, to hold build.sh's emulations of its output against the
# real thing. Its host libraries come from trixie too (bookworm's glibc is older than it needs); they
# are not pinned, as any trixie build of them runs it, and are run through trixie's own loader:
#   trixie    gcc-14-powerpc64le-linux-gnu, cpp-14-powerpc64le-linux-gnu 14.2.0-19cross1 (amd64)
#
# A kernel added here gets one row in tests/boot.py (KERNELS: its paths, generation and counts, and
# its stamp in STAMPS); the corpus tests take it up from there.
#
# Idempotent: each complete extraction is marked with a stamp file and not fetched again.
# apt-get is pointed at a private lists directory with an architecture override, so the host's
# apt state (amd64) is left untouched and no foreign architecture is added to dpkg. The machine's
# own apt sources list only bookworm; trixie and sid come from a private sources list built from
# the archive URI that the machine's apt configuration already uses (no host name is written here).
set -euo pipefail

CACHE=${MCOUNTRW_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/mcountrw/corpus}
BOOKWORM=(linux-image-6.1.0-50-powerpc64le=6.1.176-1 busybox-static)
TRIXIE=(linux-image-6.12.107+deb13-powerpc64le=6.12.107-1)
SID=(linux-binary-7.2.13+deb14-powerpc64le=7.2.13-1 linux-modules-7.2.13+deb14-powerpc64le=7.2.13-1)
BOOKWORM_612=(linux-image-6.12.118+deb12-powerpc64le=6.12.118-1~deb12u1)
# The same package by its pool path and SHA256, for when apt cannot find it: the security archive's
# mirror served a Packages.xz out of step with its InRelease for over a day (seen here, 2026-12-05:
# "File has unexpected size ... Mirror sync in progress?"), and apt then drops the whole index.
BOOKWORM_612_POOL=pool/updates/main/l/linux-6.12/linux-image-6.12.118+deb12-powerpc64le_6.12.118-1~deb12u1_ppc64el.deb
BOOKWORM_612_SHA256=6610ec562c53e4073e496cff883d053dc0355f9ed9db24b19b624f0212350f9f
PAGES_64K=(linux-image-6.12.107+deb13-powerpc64le-64k=6.12.107-1
           linux-binary-7.2.13+deb14-powerpc64le-64k=7.2.13-1 linux-modules-7.2.13+deb14-powerpc64le-64k=7.2.13-1)
SOURCE_72=(linux-source-7.2=7.2.13-1)
GCC_14=(gcc-14-powerpc64le-linux-gnu=14.2.0-19cross1 cpp-14-powerpc64le-linux-gnu=14.2.0-19cross1
        libc6 libgcc-s1 libstdc++6 libisl23 libmpc3 libmpfr6 libgmp10 libzstd1 zlib1g)

mkdir -p "$CACHE/root"

stamp_of() { echo "$CACHE/.complete-$1"; }

# fetch NAME LISTS APT-OPTIONS... -- PACKAGES...: download into a fresh directory, then extract.
# LISTS names the package lists, shared by the fetches from the same sources.
fetch() {
    local name=$1 lists="$CACHE/lists-$2"; shift 2
    local opts=()
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    [ -f "$(stamp_of "$name")" ] && return 0
    local debs="$CACHE/debs-$name"
    rm -rf "$debs"
    mkdir -p "$lists/partial" "$debs"
    local arch=${FETCH_ARCH:-ppc64el} root=${FETCH_ROOT:-$CACHE/root}
    mkdir -p "$root"
    local apt=(apt-get -q -oAPT::Architecture="$arch" -oAPT::Architectures="$arch"
               -oDir::State::Lists="$lists" -oDir::Cache::Archives="$debs" -oDebug::NoLocking=1 "${opts[@]}")
    # A mirror mid-sync can fail one index (seen with bookworm-security); the download is the real check.
    "${apt[@]}" update >&2 || "${apt[@]}" update >&2 || true
    if ! (cd "$debs" && "${apt[@]}" download "$@" >&2); then
        [ -n "${FETCH_POOL:-}" ] || return 1
        pool_download "$debs" "$FETCH_POOL" "$FETCH_SHA256"
    fi
    for deb in "$debs"/*.deb; do
        dpkg -x "$deb" "$root"
    done
    touch "$(stamp_of "$name")"
}

# The main Debian archive URI of the machine's own apt configuration (the repository that serves
# its base suite, not -security or -updates).
archive_uri() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
        | awk '$2 !~ /-/ && $1 !~ /security/ {print $1; exit}'
}

# The security archive's URI in the machine's apt configuration.
security_uri() {
    apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | awk '$1 ~ /security/ {print $1; exit}'
}

# pool_download DIR POOL-PATH SHA256: one pinned .deb straight from the security archive's pool,
# kept only if its SHA256 is the pinned one.
pool_download() {
    local dir=$1 path=$2 sha=$3 uri deb
    uri=$(security_uri)
    [ -n "$uri" ] || { echo "corpus/fetch.sh: no security archive in this machine's apt configuration" >&2; return 1; }
    deb="$dir/$(basename "$path")"
    echo "corpus/fetch.sh: apt could not fetch it; taking $path from the pool" >&2
    curl -fsS --retry 3 -o "$deb.part" "${uri%/}/$path"
    if [ "$(sha256sum < "$deb.part" | cut -d' ' -f1)" != "$sha" ]; then
        echo "corpus/fetch.sh: $path: SHA256 is not the pinned $sha" >&2
        rm -f "$deb.part"
        return 1
    fi
    mv "$deb.part" "$deb"
}

fetch bookworm bookworm -- "${BOOKWORM[@]}"
FETCH_POOL=$BOOKWORM_612_POOL FETCH_SHA256=$BOOKWORM_612_SHA256 fetch bookworm-6.12 bookworm -- "${BOOKWORM_612[@]}"

# the_archive: the archive URI, or a one-line error.
the_archive() {
    local uri
    uri=$(archive_uri)
    if [ -z "$uri" ]; then
        echo "corpus/fetch.sh: no Debian archive in this machine's apt configuration" >&2
        exit 1
    fi
    echo "$uri"
}

# fetch_private NAME LISTS ARCH "SUITE..." -- PACKAGES...: fetch for ARCH from the SUITEs through a
# private sources list naming the machine's own archive ($CACHE/apt-LISTS).
fetch_private() {
    local name=$1 lists=$2 arch=$3 suites=$4; shift 4
    [ -f "$(stamp_of "$name")" ] && return 0
    local uri suite etc="$CACHE/apt-$lists"
    uri=$(the_archive)
    mkdir -p "$etc/sources.list.d"
    for suite in $suites; do
        printf 'deb [arch=%s] %s %s main\n' "$arch" "$uri" "$suite"
    done > "$etc/sources.list"
    FETCH_ARCH=$arch fetch "$name" "$lists" \
        -oDir::Etc::SourceList="$etc/sources.list" -oDir::Etc::SourceParts="$etc/sources.list.d" "$@"
}

# fetch_newer NAME PACKAGES...: ppc64el packages from trixie and sid.
fetch_newer() {
    local name=$1; shift
    fetch_private "$name" trixie-sid ppc64el "trixie sid" -- "$@"
}

# fetch_host_trixie NAME PACKAGES...: this machine's (amd64) packages from trixie, into $CACHE/NAME.
fetch_host_trixie() {
    local name=$1; shift
    [ -f "$(stamp_of "$name")" ] && return 0
    rm -rf "${CACHE:?}/$name"
    FETCH_ROOT="$CACHE/$name" fetch_private "$name" trixie-amd64 amd64 trixie -- "$@"
}

fetch_newer trixie-sid "${TRIXIE[@]}" "${SID[@]}"
fetch_newer pages-64k "${PAGES_64K[@]}"
fetch_newer source-7.2 "${SOURCE_72[@]}"
fetch_host_trixie gcc-14 "${GCC_14[@]}"
MCOUNTRW_CORPUS=$CACHE bash "$(dirname "$0")/build-be.sh"
echo "$CACHE"
