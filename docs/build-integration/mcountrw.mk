# mcountrw.mk -- pre-nop ftrace call sites as part of a kernel build (see docs/prenop.md).
#
# vmlinux, right after it is linked: add one line to the `vmlinux:` recipe of
# arch/powerpc/Makefile.postlink, after the checks that are already there, and include this file:
#
#     include $(srctree)/scripts/mcountrw.mk        # wherever you keep it
#     vmlinux vmlinux.unstripped: FORCE
#             @true
#     ...head_check / relocs_check / ftrace_check (7.2), whichever are there, as before...
#             $(call cmd,mcountrw_vmlinux)
#
# Name both targets: newer kernels (7.2) run the postlink step on `vmlinux.unstripped` and make
# vmlinux from it with objcopy; a `vmlinux:` rule alone then never runs (docs/prenop.md).
#
# Modules, after `make modules` (in the build tree, before modules_install signs and compresses
# them: no re-signing needed) or after `make modules_install` (signed: set MCOUNTRW_SIGN_ARGS):
#
#     make -f mcountrw.mk mcountrw-modules MODLIB=$(objtree)             # built, unsigned .ko
#     make -f mcountrw.mk mcountrw-modules MODLIB=$(INSTALL_MOD_PATH)/lib/modules/$(KERNELRELEASE) \
#          MCOUNTRW_SIGN_ARGS="--sign-key certs/signing_key.pem --sign-cert certs/signing_key.x509"
#
# Every variable can be set on the make command line or in the environment.

MCOUNTRW           ?= mcountrw
MCOUNTRW_POLICY    ?= $(if $(srctree),$(srctree)/)ftrace.policy
MCOUNTRW_LOG_DIR   ?= $(if $(objtree),$(objtree)/).mcountrw-logs
MCOUNTRW_JOBS      ?=
# --strip-signature, or --sign-key KEY --sign-cert CERT [--hash sha256]; empty for unsigned modules.
MCOUNTRW_SIGN_ARGS ?=
# kbuild sets KERNELRELEASE; run by hand with neither it nor MODLIB, MODLIB would be /lib/modules/,
# every kernel installed on the build machine, nopped in place: the module targets refuse instead.
MODLIB             ?= $(if $(KERNELRELEASE),$(INSTALL_MOD_PATH)/lib/modules/$(KERNELRELEASE))

mcountrw_jobs = $(if $(MCOUNTRW_JOBS),--jobs $(MCOUNTRW_JOBS))
mcountrw_modlib = $(or $(MODLIB),$(error mcountrw.mk: set MODLIB to the modules' directory (or KERNELRELEASE)))

# The vmlinux was just linked, so an old log for it is stale, not a sign of trouble
# (--replace-stale-logs). The summary table goes to a file; errors still reach the build log.
quiet_cmd_mcountrw_vmlinux = PRENOP  $@
      cmd_mcountrw_vmlinux = mkdir -p $(MCOUNTRW_LOG_DIR) && \
	$(MCOUNTRW) prenop --policy $(MCOUNTRW_POLICY) --in-place --replace-stale-logs \
	    --log-dir $(MCOUNTRW_LOG_DIR)/vmlinux $(mcountrw_jobs) $@ > $(MCOUNTRW_LOG_DIR)/vmlinux.summary

.PHONY: mcountrw-modules mcountrw-modules-undo
mcountrw-modules:
	$(MCOUNTRW) prenop --policy $(MCOUNTRW_POLICY) --in-place --replace-stale-logs \
	    --log-dir $(MCOUNTRW_LOG_DIR)/modules $(MCOUNTRW_SIGN_ARGS) $(mcountrw_jobs) $(mcountrw_modlib)

mcountrw-modules-undo:
	$(MCOUNTRW) prenop --undo --in-place --log-dir $(MCOUNTRW_LOG_DIR)/modules $(mcountrw_jobs) $(mcountrw_modlib)
