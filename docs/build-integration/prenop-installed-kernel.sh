#!/bin/sh
# Pre-nop an installed kernel tree: vmlinux and every module of lib/modules/$KERNELRELEASE under
# $INSTALL_MOD_PATH, in place, then verify every file against its patch log. For packaging: run it
# after `make modules_install INSTALL_MOD_PATH=$DESTDIR` (and copying vmlinux), before building
# the package. Running it again changes nothing. See docs/prenop.md.
#
#   INSTALL_MOD_PATH   the staging root (required)
#   KERNELRELEASE      e.g. 6.1.0-50-powerpc64le (required; `make -s kernelrelease`)
#   MCOUNTRW_POLICY    the policy file (required)
#   VMLINUX            the vmlinux to pre-nop too (optional; one that lies in the modules directory,
#                      as Debian's 7.2 vmlinuz does, is left alone with a warning unless named here)
#   MCOUNTRW_LOG_DIR   where the patch logs go, and the run's JSON report beside it as
#                      $MCOUNTRW_LOG_DIR.report.json; keep both out of the package (default: ./mcountrw-logs)
#   MCOUNTRW_SIGN      strip (default): drop module signatures; key: re-sign with
#                      MCOUNTRW_SIGN_KEY / MCOUNTRW_SIGN_CERT (e.g. certs/signing_key.pem and
#                      certs/signing_key.x509 of the build; KBUILD_SIGN_PIN for an encrypted key);
#                      none: modules are not signed
#   MCOUNTRW           the command (default: mcountrw)
#
# Undo everything (the same variables set; every path spelled out, as the script's own are):
#   mcountrw prenop --undo --in-place --log-dir "${MCOUNTRW_LOG_DIR:-mcountrw-logs}" \
#       ${VMLINUX:+"$VMLINUX"} "$INSTALL_MOD_PATH/lib/modules/$KERNELRELEASE"
set -eu

: "${INSTALL_MOD_PATH:?set INSTALL_MOD_PATH to the staging root}"
: "${KERNELRELEASE:?set KERNELRELEASE (make -s kernelrelease)}"
: "${MCOUNTRW_POLICY:?set MCOUNTRW_POLICY to the policy file}"
MCOUNTRW=${MCOUNTRW:-mcountrw}
LOG_DIR=${MCOUNTRW_LOG_DIR:-mcountrw-logs}
MODULES=$INSTALL_MOD_PATH/lib/modules/$KERNELRELEASE

case ${MCOUNTRW_SIGN:-strip} in
strip) set -- --strip-signature ;;
key) set -- --sign-key "${MCOUNTRW_SIGN_KEY:?set MCOUNTRW_SIGN_KEY}" \
            --sign-cert "${MCOUNTRW_SIGN_CERT:?set MCOUNTRW_SIGN_CERT}" ;;
none) set -- ;;
*) echo "MCOUNTRW_SIGN must be strip, key or none" >&2; exit 2 ;;
esac

# Freshly installed files are new inputs even if an earlier run left logs behind.
# shellcheck disable=SC2086  # $MCOUNTRW may be a command with arguments
$MCOUNTRW prenop --policy "$MCOUNTRW_POLICY" --in-place --replace-stale-logs --log-dir "$LOG_DIR" \
    --report "$LOG_DIR.report.json" "$@" ${VMLINUX:+"$VMLINUX"} "$MODULES"
# shellcheck disable=SC2086
$MCOUNTRW prenop --verify --log-dir "$LOG_DIR" ${VMLINUX:+"$VMLINUX"} "$MODULES"
