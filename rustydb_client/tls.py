"""The client's TLS modes and options, as libpq's sslmode.

    disable      never TLS
    prefer       TLS when the server offers it, else plaintext (the default)
    require      TLS or nothing; the certificate is not checked (encryption
                 against eavesdroppers, not against a man in the middle)
    verify-full  TLS or nothing; the certificate must chain to --tls-ca-file
                 (else the system's CAs) and name the host connected to

Only TCP connections use TLS: on the Unix socket the mode is not used.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

DISABLE, PREFER, REQUIRE, VERIFY_FULL = "disable", "prefer", "require", "verify-full"
MODES = (DISABLE, PREFER, REQUIRE, VERIFY_FULL)
DEFAULT_MODE = PREFER


class TlsOptionError(ValueError):
    """A TLS option that cannot work; the message says which and what to do."""


def resolve_mode(mode: str | None) -> str:
    """``mode``, else $RUSTYDB_TLS, else prefer."""
    mode = mode or os.environ.get("RUSTYDB_TLS") or DEFAULT_MODE
    if mode not in MODES:
        raise TlsOptionError(f"TLS mode {mode!r} is not one of {', '.join(MODES)} (--tls or $RUSTYDB_TLS)")
    return mode


def client_context(
    mode: str, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The TLS context of a client in ``mode`` (not disable)."""
    import ssl  # here: a client on the Unix socket never pays for loading it

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == VERIFY_FULL:
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            if ca_file:
                context.load_verify_locations(cafile=ca_file)
            else:
                context.load_default_certs()
        except (OSError, ssl.SSLError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
            raise TlsOptionError(f"cannot read the CA file {ca_file} (--tls-ca-file): {why}") from None
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file or key_file:
        if not cert_file:
            raise TlsOptionError("--tls-key-file needs --tls-cert-file (the client certificate) too")
        try:
            context.load_cert_chain(cert_file, key_file or None)
        except (OSError, ssl.SSLError) as e:
            why = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
            raise TlsOptionError(
                f"cannot load the client certificate {cert_file} (--tls-cert-file) and its key: {why}"
            ) from None
    return context


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls, --tls-ca-file, --tls-cert-file and --tls-key-file, with their $RUSTYDB_TLS* defaults."""
    env = os.environ
    parser.add_argument(
        "--tls",
        choices=MODES,
        default=None,
        help="TLS over TCP: disable, prefer (TLS when the server offers it; the default, or $RUSTYDB_TLS), "
        "require (encrypted, certificate not checked), verify-full (certificate and host name checked)",
    )
    parser.add_argument(
        "--tls-ca-file",
        metavar="FILE",
        default=env.get("RUSTYDB_TLS_CA_FILE"),
        help="CA certificates (PEM) verify-full checks the server's certificate against "
        "(default $RUSTYDB_TLS_CA_FILE, else the system's)",
    )
    parser.add_argument(
        "--tls-cert-file",
        metavar="FILE",
        default=env.get("RUSTYDB_TLS_CERT_FILE"),
        help="client certificate (PEM) for a server that requires one (default $RUSTYDB_TLS_CERT_FILE)",
    )
    parser.add_argument(
        "--tls-key-file",
        metavar="FILE",
        default=env.get("RUSTYDB_TLS_KEY_FILE"),
        help="the client certificate's private key (PEM; default $RUSTYDB_TLS_KEY_FILE, else in --tls-cert-file)",
    )
