"""The kernel's own module decompressor, under qemu: what tests/test_review_modrw.py's refusals rest on.

kmod hands a module to ``finit_module(MODULE_INIT_COMPRESSED_FILE)`` when the kernel decompresses its
compression (Debian's 6.12 and 7.2: xz), and decompresses it itself otherwise. The kernel stops at the
end of the first xz stream, so a second stream, which kmod's liblzma would decode too, is not what it
loads: mcountrw refuses such a file rather than read the first stream alone. And the kernel's xz
decoder checks CRC32 or nothing: a CRC64 module does not load there, while its rewrite (written with
Kbuild's CRC32) does; audit warns of it (xz-check). On 6.12 and 7.2 alike.
"""

from __future__ import annotations

import json
import lzma
import re
import subprocess
from pathlib import Path

import pytest
from boot import QEMU, boot, make_program_initramfs, require_kernel, require_tool
from conftest import invoke

pytestmark = [pytest.mark.boot, pytest.mark.corpus]

INIT_SOURCE = Path(__file__).resolve().parent / "data" / "finit_compressed.c"
EINVAL = 22


@pytest.mark.parametrize("name", ["6.12", "7.2"])
def test_the_kernel_reads_the_first_xz_stream_alone_and_no_crc64(name: str, tmp_path: Path) -> None:
    files = require_kernel(name)
    require_tool(QEMU)
    cc = require_tool("powerpc64le-linux-gnu-gcc")
    init = tmp_path / "init"
    subprocess.run([cc, "-static", "-O2", str(INIT_SOURCE), "-o", str(init)], check=True)
    shipped = (files.modules_dir / "fs" / "nls" / "nls_utf8.ko.xz").read_bytes()
    content = lzma.decompress(shipped)
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "a_shipped.ko.xz").write_bytes(shipped)
    (mods / "b_two_streams.ko.xz").write_bytes(shipped + lzma.compress(b"a second stream", check=lzma.CHECK_CRC32))
    (mods / "c_crc64.ko.xz").write_bytes(lzma.compress(content, check=lzma.CHECK_CRC64))
    nop = invoke("nop", mods / "c_crc64.ko.xz", "-o", mods / "d_crc64_rewritten.ko.xz", "--drop-records",
                 "--strip-signature", "--kernel", files.vmlinux)  # fmt: skip
    assert nop.exit_code == 0, nop.output
    refused = invoke("scan", mods / "b_two_streams.ko.xz")
    assert refused.exit_code == 2 and "another xz stream" in refused.stderr, refused.output
    # audit warns of the module the kernel will not decompress, and of no other (anomaly xz-check)
    for m, warned in (("a_shipped", False), ("c_crc64", True), ("d_crc64_rewritten", False)):
        audit = invoke("audit", "--format", "json", mods / f"{m}.ko.xz")
        (image,) = json.loads(audit.stdout)["images"]
        kinds = [a["kind"] for a in image["anomalies"]]
        assert ("xz-check" in kinds) is warned, (m, kinds)
    modules = sorted(mods.glob("*.ko.xz"))
    booted = boot(files.vmlinux, "console=hvc0 panic=-1", make_program_initramfs(tmp_path / "i.cpio", init, modules))
    assert booted.done, booted.console[-3000:]
    errnos = {m.group(1): int(m.group(2)) for m in re.finditer(r"MCOUNTRW-FINIT (\S+) errno=(\d+)", booted.console)}
    assert errnos == {
        "a_shipped.ko.xz": 0,
        "b_two_streams.ko.xz": 0,  # loaded: the kernel read the first stream and ignored the second
        "c_crc64.ko.xz": EINVAL,  # "decompression failed with status 6" (XZ_OPTIONS_ERROR)
        "d_crc64_rewritten.ko.xz": 0,
    }, booted.console[-3000:]
