"""`mcountrw audit --format sarif`: SARIF 2.1.0 for CI code scanning.

One run; one rule per anomaly kind (its severity and the argument for it from
``rewriter.anomalies.RULES``); one result per anomaly. Binaries have no lines, so a result is placed by
byte offset in the file (``region.byteOffset``, SARIF 3.30.2), by address
(``physicalLocation.address``, 3.32: its name, and its absoluteAddress where that fits the 32 bits
readers give it) and by function (``logicalLocations``). A compressed module
(.ko.xz) gets no region: its offsets are into the decompressed ELF, and a byteOffset counts bytes
of the artifact itself (3.30.2), which is the compressed file; its message names the section and
offset instead. The mflr-nop safety
figures travel in the run's property bag; each artifact's bag holds the image's generation, the
question its safety verdict answers, and (ool) its stub areas, or the records whose area was not found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from rewriter import __version__
from rewriter.anomalies import RULES, Anomaly, AnomalyKind
from rewriter.audit import Audit, ImageAudit, summarise
from rewriter.elf.compress import uncompressed
from rewriter.elf.image import Kind
from rewriter.report.jsonfmt import stub_gap_json, stub_json

SCHEMA_URI: Final = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT: Final = "mcountrwAnomaly/v5"
_LEVEL: Final = {"error": "error", "warning": "warning", "note": "note"}
# SARIF's reference SDK (Microsoft.CodeAnalysis.Sarif: Address.AbsoluteAddress is an int) and
# Qodana's model read absoluteAddress as a 32-bit integer, and JavaScript readers as a double: a
# kernel address (0xc000...) failed the whole log in the first ("too large for an Int32") and was
# rounded past 2**53 in the others.
_INT32_MAX: Final = 2**31 - 1


def _uri(path: Path) -> str:
    """A URI reference (SARIF 3.10.2): an absolute path as a file: URI, a relative one percent-encoded
    too (`#` would start a fragment, a space or a newline is no URI character), from the name's
    bytes: a name that is not UTF-8 gets its bytes percent-encoded, as ``as_uri`` does."""
    return path.as_uri() if path.is_absolute() else quote(os.fsencode(path.as_posix()), safe="/")


def _rules() -> list[dict[str, Any]]:
    return [
        {
            "id": kind.value,
            "name": "".join(part.capitalize() for part in kind.value.replace("-", " ").split()),
            "shortDescription": {"text": rule.title},
            "fullDescription": {"text": rule.why},
            "help": {"text": rule.why},
            "defaultConfiguration": {"level": _LEVEL[rule.severity.value]},
        }
        for kind, rule in RULES.items()
    ]


def _location(img_index: int, img: ImageAudit, a: Anomaly) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(img.path), "index": img_index}}
    if a.file_offset is not None and not img.compressed:
        physical["region"] = {"byteOffset": a.file_offset, "byteLength": 4}
    if a.addr is not None:
        physical["address"] = _address(a.addr)
    location: dict[str, Any] = {"physicalLocation": physical}
    if a.function:
        # an ool-stubs finding names its stub area, a data object the kernel fills, not a function
        kind = "object" if a.kind is AnomalyKind.OOL_STUBS else "function"
        location["logicalLocations"] = [{"name": a.function, "kind": kind}]
    return location


def _address(addr: int) -> dict[str, Any]:
    """SARIF's address object (3.32): the address in hex as its name, and as absoluteAddress where
    every reader holds it (:data:`_INT32_MAX`); a kernel's is the name alone."""
    address: dict[str, Any] = {"name": f"{addr:#x}"}
    if addr <= _INT32_MAX:
        address["absoluteAddress"] = addr
    return address


def _result(
    rule_index: dict[AnomalyKind, int], img_index: int, img: ImageAudit, a: Anomaly, fingerprint: str
) -> dict[str, Any]:
    text = a.message + (f" ({a.place})" if a.place else "")
    result: dict[str, Any] = {
        "ruleId": a.kind.value,
        "ruleIndex": rule_index[a.kind],
        "level": _LEVEL[a.severity.value],
        "message": {"text": text},
        "locations": [_location(img_index, img, a)],
        "partialFingerprints": {FINGERPRINT: fingerprint},
    }
    if a.evidence:
        result["properties"] = {"evidence": list(a.evidence)}
    return result


def _fingerprints(images: Sequence[ImageAudit]) -> list[str]:
    """One key per anomaly, stable across rebuilds that move code and however the file is named
    (``vmlinux``, ``./vmlinux``, a new /lib/modules/VERSION): kind, the file's group (its
    subsystem, ``fs/ext4``) and name, the function (for a place in none, a weak body, ``after``
    the function before it; the place only when there is neither), and for
    the second and later results with the same key their ordinal (``#2``): consumers merge results
    whose fingerprints are equal, and nine static ``type_show`` functions of one vmlinux are nine
    errors, not one. A vmlinux is ``vmlinux``: its installed name carries its version
    (``vmlinux-6.1.0-50-powerpc64le``), and each kernel update would reopen every alert; a module
    is named less its compression suffix (``kvm.ko``, also for ``kvm.ko.xz``): Debian's 6.1 ships
    ``.ko``, 6.12 ``.ko.xz``, and v4 reopened every module alert across that update. v2 keyed a
    vmlinux by its file name; v1 keyed every file by its name alone and merged such results."""
    seen: dict[str, int] = {}
    out = []
    for image, a in ((img, a) for img in images for a in img.anomalies):
        file = "vmlinux" if image.kind is Kind.VMLINUX else f"{image.group}/{uncompressed(image.path).name}"
        key = f"{a.kind.value}:{file}:{a.function or (a.near and f'after {a.near}') or a.place or '-'}"
        seen[key] = seen.get(key, 0) + 1
        out.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return out


def _artifact(img: ImageAudit) -> dict[str, Any]:
    """The image, with what SARIF has no field for in its property bag (SARIF 3.8)."""
    return {
        "location": {"uri": _uri(img.path)},
        "properties": {
            "generation": img.generation.value if img.generation else None,
            "mflr_nop_question": img.question,
            "ool_stubs": [stub_json(a) for a in img.stubs],
            "ool_stubs_unchecked": stub_gap_json(img.stub_gap),
        },
    }


def audit_sarif(audit: Audit) -> dict[str, Any]:
    rule_index = {kind: n for n, kind in enumerate(RULES)}
    placed = [(n, img, a) for n, img in enumerate(audit.images) for a in img.anomalies]
    keys = _fingerprints(audit.images)  # in the same order
    results = [_result(rule_index, n, img, a, key) for (n, img, a), key in zip(placed, keys, strict=True)]
    total = summarise(audit.images, "all")
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "mcountrw", "version": __version__, "rules": _rules()}},
        "artifacts": [_artifact(img) for img in audit.images],
        "results": results,
        "properties": {"mflr_nop_safety": dict(total.safety), "sites": total.sites, "images": total.images},
    }
    if audit.errors:
        run["invocations"] = [
            {
                "executionSuccessful": False,
                "toolExecutionNotifications": [{"level": "error", "message": {"text": e}} for e in audit.errors],
            }
        ]
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
