"""Throwaway X.509 material for TLS tests, generated with ``cryptography``.

:func:`make_certs` writes, as PEM files in one directory:

- a test CA (``ca.pem``/``ca.key``);
- a server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` signed by it
  (``server.pem``/``server.key``);
- optionally client certificates signed by the same CA (``client-<name>.pem``/``.key``),
  with the name as common name;
- a second, unrelated CA (``wrong-ca.pem``) with the *same* subject name as the real one,
  so "TLS with the wrong CA" fails on the signature rather than on a name mismatch.

Keys are ECDSA P-256: fast to generate and accepted by mosquitto/OpenSSL and Python's
``ssl``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertBundle", "ClientCert", "client_ssl_context", "make_certs"]

CA_NAME = "hrvstream test CA"


@dataclass(frozen=True)
class ClientCert:
    """A client certificate and its key.

    Attributes
    ----------
    cert : Path
        PEM certificate, signed by the bundle's CA.
    key : Path
        PEM private key (unencrypted PKCS#8).
    """

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertBundle:
    """Paths of the PEM files written by :func:`make_certs`.

    Attributes
    ----------
    directory : Path
        Where the files are.
    ca_cert, ca_key : Path
        The test CA.
    server_cert, server_key : Path
        The server certificate (``localhost``, ``127.0.0.1``, ``::1``) and its key.
    wrong_ca_cert : Path
        An unrelated CA with the same subject name: trusting it must fail.
    clients : dict[str, ClientCert]
        Client certificates by common name.
    """

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    wrong_ca_cert: Path
    clients: dict[str, ClientCert] = field(default_factory=dict)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hrvstream tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    # A day of slack either way for clock skew between the host and containers.
    return now - dt.timedelta(days=1), now + dt.timedelta(days=30)


def _ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    start, end = _validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def make_certs(directory: Path, *, clients: Iterable[str] = ()) -> CertBundle:
    """Generate a test CA, a server certificate, client certificates and a wrong CA.

    Parameters
    ----------
    directory : Path
        Where to write the PEM files (created if missing).
    clients : iterable of str
        Common names of the client certificates to issue (e.g. MQTT user names, for a
        broker with ``use_identity_as_username``).

    Returns
    -------
    CertBundle
        The paths of everything written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ca(CA_NAME)
    server_cert, server_key = _leaf("localhost", ca_cert, ca_key, server=True)
    wrong_ca_cert, _ = _ca(CA_NAME)
    client_files: dict[str, ClientCert] = {}
    for name in clients:
        cert, key = _leaf(name, ca_cert, ca_key, server=False)
        client_files[name] = ClientCert(
            cert=_write_cert(directory / f"client-{name}.pem", cert),
            key=_write_key(directory / f"client-{name}.key", key),
        )
    return CertBundle(
        directory=directory,
        ca_cert=_write_cert(directory / "ca.pem", ca_cert),
        ca_key=_write_key(directory / "ca.key", ca_key),
        server_cert=_write_cert(directory / "server.pem", server_cert),
        server_key=_write_key(directory / "server.key", server_key),
        wrong_ca_cert=_write_cert(directory / "wrong-ca.pem", wrong_ca_cert),
        clients=client_files,
    )


def client_ssl_context(
    ca_file: Path | str,
    *,
    client: ClientCert | None = None,
    maximum_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A verifying client context that trusts only ``ca_file``.

    Parameters
    ----------
    ca_file : Path or str
        The CA certificate to trust (the system store is *not* loaded).
    client : ClientCert, optional
        A client certificate to present.
    maximum_version : ssl.TLSVersion, optional
        Cap the TLS version (to check that a broker refuses old versions).

    Returns
    -------
    ssl.SSLContext
        For ``aiomqtt.Client(tls_context=...)``; host names are checked.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    if maximum_version is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum_version
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx
