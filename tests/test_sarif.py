"""`mcountrw audit --format sarif`: valid SARIF 2.1.0 (the OASIS schema, vendored in tests/data),
one result per anomaly with its level and place, one rule per anomaly kind."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from boot import counts, require_kernel
from conftest import FIXTURES, ROOT
from typer.testing import CliRunner

from rewriter.anomalies import RULES
from rewriter.cli import app
from rewriter.elf.compress import Compression, compress
from rewriter.report.sarif import FINGERPRINT

SCHEMA = json.loads((ROOT / "tests" / "data" / "sarif-schema-2.1.0.json").read_text())


def _sarif(tmp_path: Path, *paths: Path) -> dict:
    out = tmp_path / "audit.sarif"
    result = CliRunner().invoke(
        app, ["audit", *map(str, paths), "--format", "sarif", "-o", str(out), "--fail-on", "never"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_schema_is_the_oasis_2_1_0_one() -> None:
    assert SCHEMA["id"].endswith("/sarif-schema-2.1.0.json") and "2.1.0" in SCHEMA["title"]


def test_fixture_report_validates_and_has_one_result_per_anomaly(tmp_path: Path, manifest: dict) -> None:
    doc = _sarif(tmp_path, FIXTURES / "bin")
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    broken = json.loads(json.dumps(doc))
    broken["runs"][0]["results"][0]["level"] = "fatal"  # not a SARIF level: the schema must say so
    assert not jsonschema.Draft4Validator(SCHEMA).is_valid(broken)
    (run,) = doc["runs"]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == [k.value for k in RULES]
    by_rule = sorted((r["ruleId"], r["level"]) for r in run["results"])
    assert by_rule == sorted(
        [("broken", "error")] * 2 + [("dangling", "error")] * 2 + [("r0live", "warning")] * 2
        + [("unrecorded", "warning")] * 2 + [("patchable-before-gep", "error")] * 2
    )  # fmt: skip
    sites = [s for b in manifest["binaries"].values() for s in b["sites"]]
    ool = sum(s["generation"] == "ool" for s in sites)  # the mflr lives in the stub: n/a
    live = 2  # anom-r0live and anom-r0live.o, one r0live_fn each
    assert run["properties"]["mflr_nop_safety"] == {
        "safe": len(sites) - ool - live,
        "live": live,
        "unknown": 0,
        "n/a": ool,
    }
    assert {a["properties"]["generation"] for a in run["artifacts"]} == {"mprofile", "patchable", "ool"}


def test_results_are_placed_by_file_offset_address_and_function(tmp_path: Path, manifest: dict) -> None:
    doc = _sarif(tmp_path, FIXTURES / "bin" / "anom-broken")
    (result,) = doc["runs"][0]["results"]
    site = next(s for s in manifest["binaries"]["bin/anom-broken"]["sites"] if s["function"] == "broken_fn")
    (loc,) = result["locations"]
    assert loc["physicalLocation"]["region"]["byteOffset"] == int(site["slot_offset"], 16)
    assert loc["physicalLocation"]["address"]["absoluteAddress"] == int(site["slot_addr"], 16)
    assert loc["logicalLocations"] == [{"name": "broken_fn", "kind": "function"}]
    assert loc["physicalLocation"]["artifactLocation"]["uri"].startswith("file://")


def test_a_compressed_module_claims_no_byte_offset_in_the_compressed_file(tmp_path: Path) -> None:
    """The anomaly's file offset is into the decompressed ELF: as a region of the .ko.xz it would
    point at arbitrary compressed bytes. The place stays in the message (section + offset)."""
    plain = FIXTURES / "bin" / "anom-broken.o"
    packed = tmp_path / "anom-broken.ko.xz"
    packed.write_bytes(compress(plain.read_bytes(), Compression.XZ))
    (unpacked,) = _sarif(tmp_path, plain)["runs"][0]["results"]
    doc = _sarif(tmp_path, packed)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    (result,) = doc["runs"][0]["results"]
    assert "region" in unpacked["locations"][0]["physicalLocation"]
    assert "region" not in result["locations"][0]["physicalLocation"]
    assert result["message"] == unpacked["message"] and "(.text+0x" in result["message"]["text"]
    assert result["locations"][0]["logicalLocations"] == [{"name": "broken_fn", "kind": "function"}]


def test_a_clean_image_gives_an_empty_valid_run(tmp_path: Path) -> None:
    doc = _sarif(tmp_path, FIXTURES / "bin" / "clean")
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    assert doc["runs"][0]["results"] == []


@pytest.mark.corpus
def test_vmlinux_report_validates(corpus, tmp_path: Path) -> None:
    doc = _sarif(tmp_path, corpus.vmlinux)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    assert doc["runs"][0]["properties"]["mflr_nop_safety"]["safe"] == counts("6.1").records


@pytest.mark.corpus
def test_ool_vmlinux_report_validates_with_its_stubs_and_weak_body_notes(tmp_path: Path) -> None:
    doc = _sarif(tmp_path, require_kernel("7.2").vmlinux)
    jsonschema.Draft4Validator(SCHEMA).validate(doc)
    (run,) = doc["runs"]
    assert run["properties"]["mflr_nop_safety"] == {"safe": 0, "live": 0, "unknown": 0, "n/a": counts("7.2").records}
    (artifact,) = run["artifacts"]
    assert artifact["properties"]["generation"] == "ool"
    assert [(a["name"], a["covers"]) for a in artifact["properties"]["ool_stubs"]] == [
        ("ftrace_ool_stub_text", True), ("ftrace_ool_stub_text_end", True), ("ftrace_ool_stub_inittext", True)
    ]  # fmt: skip
    assert {(r["ruleId"], r["level"]) for r in run["results"]} == {("weak-body", "note")}
    assert len(run["results"]) == counts("7.2").weak_bodies


def _fingerprints(doc: dict) -> list[str]:
    return [r["partialFingerprints"][FINGERPRINT] for r in doc["runs"][0]["results"]]


def test_fingerprints_tell_files_of_one_name_apart(tmp_path: Path) -> None:
    """Consumers (GitHub code scanning) merge results with equal fingerprints: two files called
    `prog` in two directories, each with its anomalies, must not share a key (the key used the
    base name)."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "prog").write_bytes((FIXTURES / "bin" / "anom-broken").read_bytes())
    keys = _fingerprints(_sarif(tmp_path, tmp_path / "a" / "prog", tmp_path / "b" / "prog"))
    assert len(keys) >= 2 and len(set(keys)) == len(keys), keys


@pytest.mark.corpus
@pytest.mark.slow
def test_fingerprints_tell_results_in_functions_of_one_name_apart(tmp_path: Path) -> None:
    """6.1 has nine static `type_show` functions: nopped with their records kept, each is a
    `boot-refused` error, and the nine results keep nine fingerprints (they had one)."""
    kernel = require_kernel("6.1")
    out = tmp_path / "v"
    args = ["nop", str(kernel.vmlinux), "-o", str(out), "--only", "type_show", "--keep-records"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    doc = _sarif(tmp_path, out)
    refused = [r for r in doc["runs"][0]["results"] if r["ruleId"] == "boot-refused"]
    keys = [r["partialFingerprints"][FINGERPRINT] for r in refused]
    assert len(keys) == 9 and len(set(keys)) == 9, keys
    assert len(set(_fingerprints(doc))) == len(_fingerprints(doc))


def test_fingerprints_do_not_depend_on_how_the_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prog`, `./prog` and `/abs/prog` are one file: one set of keys, or code scanning closes and
    reopens every alert when a CI job names it another way."""
    (tmp_path / "prog").write_bytes((FIXTURES / "bin" / "anom-broken").read_bytes())
    monkeypatch.chdir(tmp_path)
    named = [_fingerprints(_sarif(tmp_path, p)) for p in (Path("prog"), Path("./prog"), tmp_path / "prog")]
    assert named[0] and named[0] == named[1] == named[2]


@pytest.mark.corpus
@pytest.mark.slow
def test_a_vmlinux_keeps_its_fingerprints_across_a_kernel_update(tmp_path: Path) -> None:
    """An installed vmlinux's name carries its version (vmlinux-6.1.0-50-powerpc64le): keyed by it,
    every alert would close and reopen at the next update. The keys name it `vmlinux`."""
    kernel = require_kernel("6.1")
    keys = []
    for name in ("vmlinux-6.1.0-50-powerpc64le", "vmlinux-6.1.0-51-powerpc64le"):
        (tmp_path / name).symlink_to(kernel.vmlinux)
        keys.append(_fingerprints(_sarif(tmp_path, tmp_path / name)))
    assert len(keys[0]) == 243 and keys[0] == keys[1], keys[0][:3]
    assert all(k.startswith("weak-body:vmlinux:") for k in keys[0]), keys[0][:3]


def test_a_relative_path_is_a_percent_encoded_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sp ace#1.o` went into artifactLocation.uri as is: `#` starts a fragment, and a consumer
    looked for a file called `sp ace`. An absolute path was a file: URI already."""
    name = "sp ace#1"
    (tmp_path / name).write_bytes((FIXTURES / "bin" / "anom-broken").read_bytes())
    monkeypatch.chdir(tmp_path)
    doc = _sarif(tmp_path, Path(name))
    assert [a["location"]["uri"] for a in doc["runs"][0]["artifacts"]] == ["sp%20ace%231"]
    absolute = _sarif(tmp_path, tmp_path / name)
    assert absolute["runs"][0]["artifacts"][0]["location"]["uri"] == (tmp_path / name).as_uri()


@pytest.mark.corpus
def test_weak_body_notes_keep_their_fingerprints_from_one_kernel_to_the_next(tmp_path: Path) -> None:
    """A weak body lies in no function, and its key was its address: every one of 6.12's 262 notes
    reopened in 7.2 as new. It is now the function before it (``after NAME``, the name the note's
    message gives), which most keep across the update."""
    before, after = (set(_fingerprints(_sarif(tmp_path, require_kernel(v).vmlinux))) for v in ("6.12", "7.2"))
    assert len(before) == counts("6.12").weak_bodies and len(after) == counts("7.2").weak_bodies
    assert all(":after " in key and "0x" not in key for key in before | after)
    assert len(before & after) > 0.9 * len(before), len(before & after)  # 242 of 262
