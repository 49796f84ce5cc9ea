"""Defects the helpers of this stop found outside their files and left: the patch log's plan said
route mflr-first of a plan of one-word (ool) sites, where `plan --format json` says null; `--only`
and `--exclude` matched fnmatch's globs where a policy matches the kernel's (a backslash escapes);
a stripped 6.1 vmlinux read with --mcount-addr got no quote of the kernel's boot-refused complaint
(the audit looked _mcount up by its symbol again, not at the scan's mcount entry)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from boot import require_kernel
from conftest import FIXTURES, invoke
from elftools.elf.elffile import ELFFile
from test_review_h16_scan import _stripped

from rewriter.generations import Variant
from rewriter.globs import ftrace_glob
from rewriter.log import _plan_json
from rewriter.plan import SiteRequest, plan
from rewriter.states import SiteState


def _logged_route(*requests: SiteRequest) -> Any:
    p = plan(list(requests))
    summary = _plan_json(cast(Any, SimpleNamespace(plan=p, word_writes=0)))
    assert summary is not None
    return summary["route"], p


def test_the_logs_plan_names_a_route_only_where_plan_json_does() -> None:
    route, p = _logged_route(SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED))
    assert route is None and not p.routed
    route, p = _logged_route(
        SiteRequest(Variant.OOL, SiteState.DISABLED, SiteState.ENABLED),
        SiteRequest(Variant.PATCHABLE, SiteState.NOPPED, SiteState.ENABLED),
    )
    assert route == p.route.value and p.routed


def test_only_and_exclude_read_a_glob_as_a_policy_and_the_kernel_do() -> None:
    """`\\l\\eaf_[a]dd` is leaf_add to the kernel's glob_match() and to a policy; fnmatch took each
    backslash for itself, so `--only` matched nothing (exit 1, "matches none") and `--exclude` left
    the function selected."""
    prog = FIXTURES / "bin" / "prof-le"
    glob = r"\l\eaf_[a]dd"
    assert ftrace_glob(glob).fullmatch("leaf_add")
    only = invoke("apply", prog, "--to", "disabled", "--only", glob, "--dry-run")
    assert only.exit_code == 0 and "would change 1 site to disabled" in only.output, only.output
    every = invoke("apply", prog, "--to", "disabled", "--dry-run")
    but = invoke("apply", prog, "--to", "disabled", "--exclude", glob, "--dry-run")
    assert every.exit_code == but.exit_code == 0, (every.output, but.output)
    assert "would change 6 sites" in every.output and "would change 5 sites" in but.output, but.output


@pytest.mark.corpus
def test_a_stripped_61_vmlinux_read_with_its_mcount_addr_is_quoted_as_the_kernel_complains(tmp_path: Path) -> None:
    """The complaint 6.1's ftrace_make_nop() prints names the bl _mcount it would nop; the audit
    found _mcount by its symbol, which a stripped image lacks, where the scan has it from
    --mcount-addr. The quote is the unstripped image's, which qemu prints (test_review_h17_Y)."""
    vmlinux = require_kernel("6.1").vmlinux
    nopped = tmp_path / "vmlinux"
    done = invoke("nop", vmlinux, "-o", nopped, "--only", "do_one_initcall", "--keep-records")
    assert done.exit_code == 0, done.output
    with vmlinux.open("rb") as f:
        (sym,) = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name("_mcount")
    stripped = _stripped(nopped, tmp_path / "stripped")

    def refusals(path: Path, *args: object) -> list[str]:
        report = json.loads(invoke("audit", "--format", "json", *args, path).stdout)
        return sorted(a["message"] for a in report["images"][0]["anomalies"] if a["kind"] == "boot-refused")

    whole = refusals(nopped)
    assert len(whole) == 2 and all("replaced (60000000) != old (" in m for m in whole), whole
    assert refusals(stripped, "--mcount-addr", hex(int(sym["st_value"]))) == whole
