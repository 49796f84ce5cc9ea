"""audit of a vmlinux with modules built for another release: ``nop --kernel`` refuses such a
vmlinux (tests/test_review_comp2.py), but an audit of the two together said nothing, and judged the
modules' zeroed records by that vmlinux's ftrace_process_locs() loop."""

from __future__ import annotations

import json

from boot import require_kernel
from conftest import invoke

NLS_UTF8 = "fs/nls/nls_utf8.ko.xz"


def _release_warnings(*paths: object) -> list[dict[str, object]]:
    done = invoke("audit", "--format", "json", *paths)
    assert done.exit_code == 0, done.output  # a warning, not an error: --fail-on error passes
    doc = json.loads(done.stdout)
    return [a for image in doc["images"] for a in image["anomalies"] if a["kind"] == "release-mismatch"]


def test_a_module_of_another_release_than_the_audited_vmlinux_is_a_warning() -> None:
    k612, k612_64k = require_kernel("6.12"), require_kernel("6.12-64k")
    module = k612.modules_dir / NLS_UTF8
    found = _release_warnings(k612_64k.vmlinux, module)
    assert len(found) == 1 and found[0]["severity"] == "warning", found
    message = str(found[0]["message"])
    assert "built for 6.12.107+deb13-powerpc64le (its vermagic)" in message
    assert f"audited with {k612_64k.vmlinux}, Linux 6.12.107+deb13-powerpc64le-64k" in message
    assert _release_warnings(k612.vmlinux, module) == []  # its own kernel
    assert _release_warnings(module) == []  # no vmlinux: nothing to compare
