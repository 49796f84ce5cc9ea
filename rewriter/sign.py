"""Module signatures the way the kernel's ``scripts/sign-file`` makes them.

A signed module is the module's bytes followed by a trailer (``include/linux/module_signature.h``,
``kernel/module/signing.c``)::

    [ module ELF ][ PKCS#7 / CMS SignedData, DER ][ struct module_signature ][ "~Module signature appended~\\n" ]

``struct module_signature`` is 12 bytes: ``algo``, ``hash``, ``id_type``, ``signer_len``,
``key_id_len`` (u8 each), ``__pad[3]``, ``__be32 sig_len``. For PKCS#7 everything but ``id_type``
(``PKEY_ID_PKCS7`` = 2) and ``sig_len`` is zero: the algorithm and the signer live in the CMS.

What sign-file puts in the CMS (its ``CMS_sign`` / ``CMS_add1_signer`` flags): detached content
(``CMS_DETACHED``: the module is not embedded), no certificates (``CMS_NOCERTS``), binary content
(``CMS_BINARY``: no MIME canonicalisation), no signed attributes (``CMS_NOATTR``, hence no
S/MIME capabilities and no signing time), signer identified by issuer and serial number (unless
``-k``). The kernel (``crypto/asymmetric_keys/pkcs7_verify.c``) then checks the RSA/ECDSA
signature over the digest of the module bytes directly.

The CMS is built by ``cryptography`` (OpenSSL underneath), never by hand: ``PKCS7SignatureBuilder``
with ``DetachedSignature``, ``NoAttributes``, ``NoCerts`` and ``Binary``. One difference from
sign-file: the builder encodes the SHA-2 ``AlgorithmIdentifier`` parameters as NULL where OpenSSL's
CMS code leaves them absent; both are allowed (RFC 5754 section 2) and the kernel reads only the
OID. RSA PKCS#1 v1.5 signatures are deterministic, so re-signing is reproducible; ECDSA
signatures are not (a fresh random nonce each time).

The key may be PEM (PKCS#1, PKCS#8, SEC1), the certificate PEM or DER; both may be the same file,
as the kernel's ``certs/signing_key.pem`` is. An encrypted key takes its passphrase from
``KBUILD_SIGN_PIN``, like sign-file. PKCS#11 URIs are not supported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

from rewriter.elf.signature import MODULE_SIG_MAGIC, module_signature
from rewriter.errors import RewriteError
from rewriter.reading import read_regular

if TYPE_CHECKING:  # cryptography is imported only by the code that signs (it costs 0.1 s to import)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

HASHES: Final = ("sha256", "sha384", "sha512", "sha224")


class SignError(RewriteError):
    """A key or certificate that cannot be used, or a trailer that does not parse."""


@dataclass(frozen=True)
class SigningKey:
    """Where the key and certificate come from; picklable, so worker processes load it themselves."""

    key: Path
    cert: Path
    hash: str = "sha256"

    def load(self) -> Signer:
        return Signer.load(self.key, self.cert, self.hash)


class Signer:
    """A loaded key and certificate. Build once, sign many modules."""

    def __init__(self, key: PrivateKey, cert: x509.Certificate, hash_name: str) -> None:
        self._key = key
        self._cert = cert
        self.hash_name = hash_name

    @classmethod
    def load(cls, key_path: Path, cert_path: Path, hash_name: str = "sha256") -> Signer:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if hash_name not in HASHES:
            raise SignError(f"--hash: {hash_name!r} is not one of {', '.join(HASHES)}")
        key_data = _read(key_path, "signing key")
        pin = os.environb.get(b"KBUILD_SIGN_PIN")
        try:
            key = serialization.load_pem_private_key(key_data, password=pin)
        except TypeError as e:  # encrypted without a passphrase, or a passphrase for a plain key
            raise SignError(f"{key_path}: {e} (the passphrase comes from KBUILD_SIGN_PIN)") from None
        except ValueError as e:
            raise SignError(f"{key_path}: not a PEM private key, or a wrong passphrase ({e})") from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise SignError(f"{key_path}: a {type(key).__name__}; module signing takes an RSA or ECDSA key")
        cert_data = _read(cert_path, "certificate")
        try:
            if b"-----BEGIN CERTIFICATE-----" in cert_data:
                cert = x509.load_pem_x509_certificate(cert_data)
            else:
                cert = x509.load_der_x509_certificate(cert_data)
        except ValueError as e:
            raise SignError(f"{cert_path}: not an X.509 certificate (PEM or DER): {e}") from None
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise SignError(f"{cert_path}: the certificate is not for the key in {key_path}")
        return cls(key, cert, hash_name)

    @property
    def deterministic(self) -> bool:
        """RSA PKCS#1 v1.5 signs the same bytes the same way; ECDSA draws a nonce each time."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        return isinstance(self._key, rsa.RSAPrivateKey)

    def cms(self, module: bytes) -> bytes:
        """The detached CMS SignedData over ``module`` (DER), as sign-file makes it."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.serialization import pkcs7

        algo: dict[str, hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512] = {
            "sha224": hashes.SHA224(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()
        }  # fmt: skip
        options = [
            pkcs7.PKCS7Options.DetachedSignature,
            pkcs7.PKCS7Options.NoAttributes,
            pkcs7.PKCS7Options.NoCerts,
            pkcs7.PKCS7Options.Binary,
        ]
        builder = pkcs7.PKCS7SignatureBuilder().set_data(module)
        builder = builder.add_signer(self._cert, self._key, algo[self.hash_name])
        return builder.sign(serialization.Encoding.DER, options)

    def trailer(self, module: bytes) -> bytes:
        """Everything sign-file appends to ``module``: CMS, ``struct module_signature``, marker."""
        cms = self.cms(module)
        return cms + module_signature(len(cms)) + MODULE_SIG_MAGIC


def _read(path: Path, what: str) -> bytes:
    try:
        return read_regular(path)
    except OSError as e:
        raise SignError(f"{path}: cannot read the {what} ({e.strerror})") from None
