"""A throwaway certificate authority for the TLS tests, made with `cryptography`.

``write_certs(directory)`` writes, each as PEM with its key at mode 0600:

    ca.pem                     the CA's certificate
    server.pem, server.key     the server's, for localhost and 127.0.0.1
    other.pem, other.key       a server certificate for db.example.com only
    client.pem, client.key     a client certificate signed by the CA
    rogue-ca.pem               another CA, which signed none of them
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certs:
    ca: str
    server_cert: str
    server_key: str
    other_cert: str
    other_key: str
    client_cert: str
    client_key: str
    rogue_ca: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(subject, key, issuer, issuer_key, *, ca=False, dns=(), ips=(), usage=None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
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
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: str, data: bytes, mode: int = 0o644) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


def _write_pair(directory: str, name: str, cert: x509.Certificate, key) -> tuple[str, str]:
    cert_path = _write(os.path.join(directory, f"{name}.pem"), cert.public_bytes(serialization.Encoding.PEM))
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_path, _write(os.path.join(directory, f"{name}.key"), key_bytes, 0o600)


def write_certs(directory: str) -> Certs:
    os.makedirs(directory, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(_name("RustyDB test CA"), ca_key, _name("RustyDB test CA"), ca_key, ca=True)
    ca = _write(os.path.join(directory, "ca.pem"), ca_cert.public_bytes(serialization.Encoding.PEM))

    def leaf(name, common_name, usage, dns=(), ips=()):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(_name(common_name), key, ca_cert.subject, ca_key, dns=dns, ips=ips, usage=usage)
        return _write_pair(directory, name, cert, key)

    server = leaf("server", "localhost", ExtendedKeyUsageOID.SERVER_AUTH, dns=["localhost"], ips=["127.0.0.1"])
    other = leaf("other", "db.example.com", ExtendedKeyUsageOID.SERVER_AUTH, dns=["db.example.com"])
    client = leaf("client", "rustydb-test-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_cert = _issue(_name("Rogue CA"), rogue_key, _name("Rogue CA"), rogue_key, ca=True)
    rogue = _write(os.path.join(directory, "rogue-ca.pem"), rogue_cert.public_bytes(serialization.Encoding.PEM))
    return Certs(ca, *server, *other, *client, rogue)
