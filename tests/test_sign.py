"""Module signing: the trailer sign-file makes, checked with openssl and against a Debian module's."""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from boot import require_tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from rewriter.elf.image import Image
from rewriter.elf.signature import MODULE_SIG_MAGIC as MARKER
from rewriter.elf.signature import TrailerError, module_signature, parse_trailer
from rewriter.errors import ImageError
from rewriter.sign import Signer, SignError

BODY = b"\x7fELF" + bytes(range(256)) * 64  # any bytes: the signature does not parse the module


def _cert(key, cn: str) -> x509.Certificate:  # type: ignore[no-untyped-def]
    """Like the kernel's certs/x509.genkey: self-signed, CA:FALSE, digitalSignature."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x4D434F554E54)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_pair(directory: Path, key, name: str, password: bytes | None = None) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    key_path, cert_path = directory / f"{name}.key.pem", directory / f"{name}.crt.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc))
    cert_path.write_bytes(_cert(key, f"mcountrw {name}").public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:  # type: ignore[no-untyped-def]
    """Throwaway keys: RSA-2048 (what kernels default to is 4096; 2048 keeps tests fast) and P-256."""
    d = tmp_path_factory.mktemp("keys")
    return {
        "rsa": _write_pair(d, rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa"),
        "other": _write_pair(d, rsa.generate_private_key(public_exponent=65537, key_size=2048), "other"),
        "ec": _write_pair(d, ec.generate_private_key(ec.SECP256R1()), "ec"),
    }


def openssl_verify(module: Path, cert: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Check a signed module's CMS over the module bytes before the trailer, against ``cert``."""
    openssl = require_tool("openssl")
    data = module.read_bytes()
    trailer = parse_trailer(data)
    assert trailer is not None
    (tmp_path / "sig.der").write_bytes(trailer.cms)
    (tmp_path / "content").write_bytes(data[: trailer.elf_end])
    cmd = [str(openssl), "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
           "-content", str(tmp_path / "content"), "-certfile", str(cert), "-CAfile", str(cert),
           "-purpose", "any", "-out", "/dev/null"]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


def cms_shape(cms: bytes, tmp_path: Path) -> list[str]:
    """`openssl cms -cmsout -print` with the values that differ per key and per module taken out."""
    openssl = require_tool("openssl")
    (tmp_path / "shape.der").write_bytes(cms)
    out = subprocess.run(
        [str(openssl), "cms", "-cmsout", "-print", "-inform", "DER", "-in", str(tmp_path / "shape.der")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    keep: list[str] = []
    for line in out.splitlines():
        if re.match(r"\s+[0-9a-f]{4} - ", line) or "issuer:" in line or "serialNumber:" in line:
            continue
        if line.strip() == "parameter: NULL" and keep and keep[-1].startswith("algorithm: sha"):
            line = "parameter: <ABSENT> (NULL)"  # RFC 5754: SHA-2 parameters absent or NULL, both read
        keep.append(line.strip())
    return keep


def test_signature_verifies_with_openssl_against_the_certificate(keys, tmp_path: Path) -> None:
    key, cert = keys["rsa"]
    module = tmp_path / "m.ko"
    module.write_bytes(BODY + Signer.load(key, cert).trailer(BODY))
    result = openssl_verify(module, cert, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr


def test_a_changed_module_or_another_certificate_fails_openssl_verification(keys, tmp_path: Path) -> None:
    key, cert = keys["rsa"]
    signed = bytearray(BODY + Signer.load(key, cert).trailer(BODY))
    signed[100] ^= 1
    module = tmp_path / "m.ko"
    module.write_bytes(bytes(signed))
    assert openssl_verify(module, cert, tmp_path).returncode != 0
    module.write_bytes(BODY + Signer.load(key, cert).trailer(BODY))
    assert openssl_verify(module, keys["other"][1], tmp_path).returncode != 0


def test_ecdsa_keys_sign_too(keys, tmp_path: Path) -> None:
    key, cert = keys["ec"]
    module = tmp_path / "m.ko"
    module.write_bytes(BODY + Signer.load(key, cert, "sha384").trailer(BODY))
    assert openssl_verify(module, cert, tmp_path).returncode == 0
    assert not Signer.load(key, cert).deterministic


def test_trailer_struct_is_pkcs7_with_big_endian_length_then_the_marker(keys) -> None:
    key, cert = keys["rsa"]
    trailer = Signer.load(key, cert).trailer(BODY)
    parsed = parse_trailer(BODY + trailer)
    assert parsed is not None and parsed.elf_end == len(BODY)
    assert trailer.endswith(MARKER)
    assert (parsed.algo, parsed.hash, parsed.id_type, parsed.signer_len, parsed.key_id_len) == (0, 0, 2, 0, 0)
    assert parsed.pad == bytes(3)
    assert trailer[len(parsed.cms) :] == module_signature(len(parsed.cms)) + MARKER


def test_rsa_signatures_are_reproducible(keys) -> None:
    key, cert = keys["rsa"]
    signer = Signer.load(key, cert)
    assert signer.deterministic and signer.trailer(BODY) == Signer.load(key, cert).trailer(BODY)


def test_trailer_layout_matches_a_debian_signed_module(corpus, keys, tmp_path: Path) -> None:
    """Same struct bytes but the length, same marker, and the same CMS shape: SignedData,
    detached, no certificates, no signed attributes, issuer+serial signer, sha256 + rsaEncryption.
    The one difference is allowed by RFC 5754: cryptography writes NULL digest parameters."""
    debian = (corpus.modules_dir / "fs/nls/nls_utf8.ko").read_bytes()
    theirs = parse_trailer(debian)
    assert theirs is not None
    key, cert = keys["rsa"]
    body = debian[: theirs.elf_end]
    mine_bytes = body + Signer.load(key, cert).trailer(body)
    mine = parse_trailer(mine_bytes)
    assert mine is not None and mine.elf_end == theirs.elf_end
    struct = slice(-len(MARKER) - 12, -len(MARKER) - 4)
    assert mine_bytes[struct] == debian[struct] == bytes([0, 0, 2, 0, 0, 0, 0, 0])
    assert mine_bytes.endswith(MARKER) and debian.endswith(MARKER)
    shape_theirs = cms_shape(theirs.cms, tmp_path)
    shape_mine = cms_shape(mine.cms, tmp_path)
    for must in ("contentType: pkcs7-signedData (1.2.840.113549.1.7.2)", "eContent: <ABSENT>",
                 "d.issuerAndSerialNumber:", "algorithm: sha256 (2.16.840.1.101.3.4.2.1)",
                 "algorithm: rsaEncryption (1.2.840.113549.1.1.1)"):  # fmt: skip
        assert must in shape_theirs and must in shape_mine
    assert shape_mine == [x.replace("parameter: <ABSENT>", "parameter: <ABSENT> (NULL)") for x in shape_theirs]


def test_combined_key_and_certificate_file_and_der_certificate_are_accepted(keys, tmp_path: Path) -> None:
    key, cert = keys["rsa"]
    both = tmp_path / "signing_key.pem"  # what the kernel's certs/Makefile generates
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    der = tmp_path / "signing_key.x509"
    der.write_bytes(x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER))
    assert Signer.load(both, both).trailer(BODY) == Signer.load(key, der).trailer(BODY)


def test_encrypted_key_takes_its_passphrase_from_kbuild_sign_pin(tmp_path: Path, monkeypatch) -> None:
    key, cert = _write_pair(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048), "enc", b"s3cret")
    monkeypatch.delenv("KBUILD_SIGN_PIN", raising=False)
    with pytest.raises(SignError, match="KBUILD_SIGN_PIN"):
        Signer.load(key, cert)
    monkeypatch.setenv("KBUILD_SIGN_PIN", "s3cret")
    Signer.load(key, cert)


def test_mismatched_key_and_certificate_and_unknown_hash_are_refused(keys) -> None:
    with pytest.raises(SignError, match="not for the key"):
        Signer.load(keys["rsa"][0], keys["other"][1])
    with pytest.raises(SignError, match="--hash: 'md5'"):
        Signer.load(*keys["rsa"], "md5")
    with pytest.raises(SignError, match="not a PEM private key"):
        Signer.load(keys["rsa"][1], keys["rsa"][1])


# -- re-signed modules through mcountrw undo and verify ----------------------------------------


def test_appended_trailer_is_an_edit_that_applies_reverts_and_reads_back(keys) -> None:
    from rewriter.edits import KINDS, Append, LineText, Truncate, apply_edits, invert_edits
    from rewriter.errors import WordMismatch

    key, cert = keys["rsa"]
    old = Signer.load(key, cert).trailer(BODY)
    new = Signer.load(*keys["other"]).trailer(BODY)
    edits = [Truncate(len(BODY), old, "module signature"), Append(len(BODY), new, "module signature (re-signed)")]
    signed = apply_edits(bytearray(BODY + old), edits, "little")
    assert bytes(signed) == BODY + new
    assert bytes(invert_edits(bytearray(signed), edits, "little")) == BODY + old
    line = json.loads(edits[1].to_line(LineText("little")))
    assert line["type"] == "append" and KINDS["append"](line) == edits[1]
    with pytest.raises(WordMismatch, match="does not end with the appended"):
        edits[1].revert(bytearray(BODY + old), "little")
    with pytest.raises(WordMismatch, match="file size"):
        edits[1].apply(bytearray(BODY + b"x"), "little")


@pytest.mark.corpus
def test_resigned_modules_verify_and_undo_with_the_single_file_commands(keys, tmp_path: Path) -> None:
    """prenop --sign-key logs the new trailer (an ``append`` edit after the ``truncate`` of the old
    one), so ``mcountrw verify`` passes on the re-signed module and ``mcountrw undo`` gives back
    Debian's signed original, sha256 for sha256; a 6.12 .ko.xz comes back compressed as it was."""
    from boot import require_kernel

    modules = [(require_kernel("6.1").modules_dir / "fs/nls/nls_utf8.ko", "rsa")]
    modules.append((require_kernel("6.12").modules_dir / "fs/nls/nls_utf8.ko.xz", "ec"))
    policy = tmp_path / "all.policy"
    policy.write_text("default nop\n")
    for n, (original, which) in enumerate(modules):
        key, cert = keys[which]
        tree = tmp_path / f"tree{n}"
        tree.mkdir()
        module = tree / original.name
        module.write_bytes(original.read_bytes())
        proc = _mcountrw("prenop", "--policy", policy, "--in-place", "--sign-key", key, "--sign-cert", cert, tree)
        assert proc.returncode == 0 and "module signatures: 1 re-signed" in proc.stdout, proc.stdout + proc.stderr
        log = module.with_name(module.name + ".mcountrw.jsonl")
        types = [json.loads(line)["type"] for line in log.read_text().splitlines()]
        # site lines describe what was there; edits come in order
        edits = [t for t in types if t not in ("site", "sites")]
        assert edits[-3:] == ["truncate", "append", "footer"]
        if which == "rsa":
            plain = tmp_path / "plain.ko"
            plain.write_bytes(module.read_bytes())
            assert openssl_verify(plain, cert, tmp_path).returncode == 0
        proc = _mcountrw("verify", original, module, "--log", log)
        assert proc.returncode == 0 and proc.stdout.startswith("ok: "), proc.stdout + proc.stderr
        back = tmp_path / f"back{n}{original.suffix}"
        proc = _mcountrw("undo", module, "--log", log, "-o", back)
        assert proc.returncode == 0, proc.stderr
        assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
        proc = _mcountrw("undo", module, "--log", log, "--in-place")
        assert proc.returncode == 0 and module.read_bytes() == original.read_bytes(), proc.stderr


def _mcountrw(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rewriter", *map(str, args)], capture_output=True, text=True)


def test_reading_and_signing_agree_on_a_trailer_that_leaves_no_room_for_an_elf_header(tmp_path) -> None:
    """One parser: a module load and prenop's re-signing check both refuse a trailer whose length
    would leave fewer bytes than an ELF header before it (the two parsers used to disagree)."""
    body = b"\x7fELF\x02\x01\x01" + bytes(33)  # ELF64, little-endian: read as far as the trailer
    cms = b"\x30" * 8
    data = body + cms + module_signature(len(cms)) + MARKER
    with pytest.raises(TrailerError, match="runs past the start of the file"):
        parse_trailer(data)
    (tmp_path / "m.ko").write_bytes(data)
    with pytest.raises(ImageError, match=r"m\.ko: module signature length 8 runs past the start"):
        Image.load(tmp_path / "m.ko")
    whole = BODY + cms + module_signature(len(cms)) + MARKER
    parsed = parse_trailer(whole)
    assert parsed is not None and (parsed.elf_end, parsed.cms, parsed.id_type) == (len(BODY), cms, 2)
