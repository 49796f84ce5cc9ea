"""The scanner on the real Debian 6.1 ppc64el kernel: every site, set-equal to the kernel's records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from rewriter.batch import expand, scan_many
from rewriter.elf.image import Image
from rewriter.sites import scan
from rewriter.generations import Variant
from rewriter.states import SiteState


def _vmlinux_records(path) -> set[int]:
    """__start_mcount_loc..__stop_mcount_loc read independently, with pyelftools."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        symtab = elf.get_section_by_name(".symtab")
        lo = symtab.get_symbol_by_name("__start_mcount_loc")[0]["st_value"]
        hi = symtab.get_symbol_by_name("__stop_mcount_loc")[0]["st_value"]
        for seg in elf.iter_segments():
            if seg["p_vaddr"] <= lo < seg["p_vaddr"] + seg["p_filesz"]:
                fh.seek(seg["p_offset"] + lo - seg["p_vaddr"])
                raw = fh.read(hi - lo)
    return {int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)}


def test_vmlinux_has_exactly_the_recorded_sites(corpus) -> None:
    result = scan(Image.load(corpus.vmlinux))
    assert len(result.sites) == 33_690
    assert {s.addr for s in result.sites} == _vmlinux_records(corpus.vmlinux)
    assert all(s.recorded for s in result.sites)
    assert result.records.count == 33_690 and not result.records.unmatched
    assert Counter(s.section for s in result.sites) == {".text": 32_181, ".init.text": 1_509}
    assert {(s.variant, s.state) for s in result.sites} == {(Variant.MPROFILE, SiteState.ENABLED)}


def test_vmlinux_sites_name_their_functions(corpus) -> None:
    """Every site in a FUNC symbol is named after it; the few in code no symbol covers (static
    functions whose symbols the kernel build drops) are left unnamed rather than misnamed."""
    from elftools.elf.elffile import ELFFile

    result = scan(Image.load(corpus.vmlinux))
    with open(corpus.vmlinux, "rb") as fh:
        spans = [
            (sym["st_value"], sym["st_value"] + sym["st_size"], sym.name)
            for sym in ELFFile(fh).get_section_by_name(".symtab").iter_symbols()
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"]
        ]
    spans.sort()
    import bisect

    starts = [lo for lo, _, _ in spans]
    unnamed = 0
    for site in result.sites:
        i = bisect.bisect_right(starts, site.addr) - 1
        covering = spans[i] if i >= 0 and spans[i][0] <= site.addr < spans[i][1] else None
        if site.function is None:
            unnamed += 1
            assert covering is None
        else:
            assert covering is not None and covering[0] <= site.addr < covering[1]
    assert unnamed < len(result.sites) // 100
    sites = {s.function: s for s in result.sites}
    assert "do_one_initcall" in sites and "vfs_read" in sites
    # The call slot is the word after the local entry's mflr r0.
    img = Image.load(corpus.vmlinux)
    s = sites["do_one_initcall"]
    assert img.word_at(s.file_offset - 4) == 0x7C0802A6


def test_every_module_site_matches_its_own_records(corpus) -> None:
    files, errors = expand([corpus.modules_dir])
    assert not errors and len(files) == 3_126
    total = 0
    for outcome in scan_many(files, jobs=2):
        assert outcome.scan is not None, outcome.error
        r = outcome.scan
        total += len(r.sites)
        assert all(s.recorded for s in r.sites), r.path
        assert r.records.count == len(r.sites) and not r.records.unmatched, r.path
        assert {s.state for s in r.sites} <= {SiteState.ENABLED}
    assert total == 157_277


def test_scan_json_contract_on_a_module(corpus) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rewriter",
            "scan",
            "--format",
            "json",
            str(corpus.modules_dir / "fs/nls/nls_utf8.ko"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    image = json.loads(out.stdout)["images"][0]
    assert {k: image[k] for k in ("kind", "endian", "abi")} == {
        "kind": "module",
        "endian": "little",
        "abi": "elfv2",
    }
    sites = {(s["section"], s["offset"], s["function"]) for s in image["sites"]}
    # Independent facts from `readelf -r`: REL24 _mcount at .text+0x14, .text+0xc4, .init.text+0x14.
    assert sites == {
        (".text", 0x14, "char2uni"),
        (".text", 0xC4, "uni2char"),
        (".init.text", 0x14, "init_nls_utf8"),
    }
    assert all(s["address"] is None and s["recorded"] and s["state"] == "enabled" for s in image["sites"])
    assert image["records"]["count"] == 3 and image["records"]["unmatched"] == []
