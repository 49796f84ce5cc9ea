#!/usr/bin/env bash
# Build the corpus's big-endian kernel: Debian's linux-source-7.2 (7.2.13-1, fetched by
# corpus/fetch.sh), configured small (tinyconfig, pseries, ftrace, a few modules) for a big-endian
# ppc64 and built by the Debian cross compiler, into the corpus cache beside the fetched kernels.
#
#   corpus/build-be.sh            (corpus/fetch.sh runs it last)
#
# Debian's big-endian ppc64 kernels live in its ports archive, which this project cannot reach; the
# source of the corpus's 7.2 can be. Built ELFv2 (7.2's default for big-endian), by bookworm's gcc 12
# its sites are mprofile (gcc 12 fails the kernel's -fpatchable-function-entry check, as for Debian
# 12's 6.12): the little-endian layout, byte-swapped. tests/test_boot_be.py reads it and has qemu boot
# it, as-built and pre-nopped. Nothing in the tests depends on the compiler's exact counts: the tests
# compare the scan with what the booted kernel lists.
#
# Idempotent (a stamp marks a complete build). About 5 minutes on 2 cores, most of it the compile.
set -euo pipefail

CACHE=${MCOUNTRW_CORPUS:-${XDG_CACHE_HOME:-$HOME/.cache}/mcountrw/corpus}
TARBALL=$CACHE/root/usr/src/linux-source-7.2.tar.xz
OUT=$CACHE/be-7.2
STAMP=$CACHE/.complete-be-7.2
[ -f "$STAMP" ] && exit 0
if [ ! -f "$TARBALL" ]; then
    echo "corpus/build-be.sh: $TARBALL is missing: run corpus/fetch.sh (it fetches linux-source-7.2)" >&2
    exit 1
fi

# What a qemu pseries boot with an initramfs, the function tracer and loadable modules needs.
ENABLE=(PPC64 PPC_BOOK3S_64 CPU_BIG_ENDIAN PPC_PSERIES POWER9_CPU SMP RELOCATABLE PPC_OF_BOOT_TRAMPOLINE
        HVC_CONSOLE HVC_RTAS TTY PRINTK EXPERT MULTIUSER FUTEX KALLSYMS BLOCK BLK_DEV_INITRD
        DEVTMPFS PROC_FS SYSFS BINFMT_ELF FTRACE FUNCTION_TRACER DYNAMIC_FTRACE MODULES MODULE_UNLOAD)
MODULES=(NLS NLS_UTF8 NLS_ISO8859_1 NLS_CODEPAGE_437 EXT2_FS)

work=$(mktemp -d "$CACHE/be-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xJf "$TARBALL" -C "$work"
src=$work/linux-source-7.2
build=$work/o
kmake=(make -s -C "$src" O="$build" ARCH=powerpc CROSS_COMPILE=powerpc64-linux-gnu-)
"${kmake[@]}" tinyconfig
args=(--file "$build/.config" --disable CPU_LITTLE_ENDIAN --disable MODULE_SIG)
for o in "${ENABLE[@]}"; do args+=(--enable "$o"); done
for o in "${MODULES[@]}"; do args+=(--module "$o"); done
"$src/scripts/config" "${args[@]}"
"${kmake[@]}" olddefconfig
for o in CPU_BIG_ENDIAN FUNCTION_TRACER DYNAMIC_FTRACE MODULES EXT2_FS; do
    if ! grep -q "^CONFIG_$o=[ym]\$" "$build/.config"; then
        echo "corpus/build-be.sh: CONFIG_$o did not survive olddefconfig" >&2
        exit 1
    fi
done
# A fixed build identity: the same source and compiler give the same bytes.
KBUILD_BUILD_TIMESTAMP='1970-01-01' KBUILD_BUILD_USER=mcountrw KBUILD_BUILD_HOST=corpus \
    "${kmake[@]}" -j"$(nproc)" vmlinux modules

rm -rf "$OUT" "$OUT.tmp"
mkdir -p "$OUT.tmp/modules"
cp "$build/vmlinux" "$build/.config" "$OUT.tmp/"
(cd "$build" && find . -name '*.ko' -print0 | xargs -0 cp -t "$OUT.tmp/modules/")
mv "$OUT.tmp" "$OUT"
touch "$STAMP"
