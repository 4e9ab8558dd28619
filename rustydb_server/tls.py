"""TLS for TCP clients: the server's certificate checks and its TLS context.

``tls_cert_file`` and ``tls_key_file`` turn TLS on for the wire protocol
(offered to TCP clients right after their hello) and for the HTTP API (served
over HTTPS with the same pair); ``tls_ca_file`` makes the wire protocol require
and verify a client certificate signed by that CA. ``tls_mode`` says what a TCP
client may do: ``off`` (no TLS even with a certificate), ``allow`` (TLS when the
client asks), ``require`` (a plaintext TCP client is refused). The Unix socket
never uses TLS: the kernel carries its bytes.

Like PostgreSQL, the server refuses to start when a file is missing or
unreadable, the key does not match the certificate, or the key file may be
read by group or others.
"""

from __future__ import annotations

import os
import ssl
import stat

OFF, ALLOW, REQUIRE = "off", "allow", "require"
MODES = (OFF, ALLOW, REQUIRE)


class TlsConfigError(Exception):
    """The TLS settings cannot work; the message says which file and what to do."""


class TlsPolicy:
    """What the server does about TLS: its context (None: no TLS) and whether a
    plaintext TCP client is refused (and why)."""

    def __init__(self, context: ssl.SSLContext | None, plaintext_refusal: str | None):
        self.context = context
        self.plaintext_refusal = plaintext_refusal

    @property
    def enabled(self) -> bool:
        return self.context is not None


NOT_ENABLED = "TLS is not enabled on this server (tls_cert_file is not set, or tls_mode is off)"
NOT_ON_UNIX_SOCKET = "the Unix socket never uses TLS"


def policy(settings) -> TlsPolicy:
    """The server's TLS policy from its settings; TlsConfigError when they cannot work."""
    mode = settings["tls_mode"]
    cert, key, ca = settings["tls_cert_file"], settings["tls_key_file"], settings["tls_ca_file"]
    if mode == OFF:
        return TlsPolicy(None, None)
    if not cert and not key:
        if mode == REQUIRE:
            raise TlsConfigError(
                "tls_mode is require but no certificate is set; set tls_cert_file and tls_key_file, "
                "or set tls_mode to allow or off"
            )
        if ca:
            raise TlsConfigError("tls_ca_file is set but TLS is not: set tls_cert_file and tls_key_file too")
        return TlsPolicy(None, None)
    context = server_context(cert, key, ca)
    refusal = None
    if mode == REQUIRE:
        refusal = (
            "this server accepts TCP clients only over TLS (tls_mode = require); connect with "
            "--tls require or --tls verify-full, or through the Unix socket"
        )
    elif ca:
        refusal = (
            "this server requires a client certificate over TCP (tls_ca_file is set), so only over TLS; "
            "connect with --tls require or --tls verify-full and --tls-cert-file/--tls-key-file"
        )
    return TlsPolicy(context, refusal)


def server_context(cert_file: str, key_file: str, ca_file: str = "") -> ssl.SSLContext:
    """A server TLS context for the certificate and key (TLS 1.2 or later), with
    client certificates required and verified against ``ca_file`` when given."""
    if not cert_file or not key_file:
        missing = "tls_key_file" if cert_file else "tls_cert_file"
        raise TlsConfigError(f"{missing} is not set; TLS needs both tls_cert_file and tls_key_file")
    _check_readable("tls_cert_file", cert_file)
    _check_key_file(key_file)
    if ca_file:
        _check_readable("tls_ca_file", ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise TlsConfigError(
                f"the private key in {key_file} (tls_key_file) does not match the certificate in {cert_file} "
                "(tls_cert_file); give the key the certificate was issued for"
            ) from None
        raise TlsConfigError(
            f"cannot load the TLS certificate {cert_file} and key {key_file}: {e.reason or e}; "
            "both must be PEM files (the key unencrypted)"
        ) from None
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except ssl.SSLError as e:
            raise TlsConfigError(
                f"cannot load the CA certificates in {ca_file} (tls_ca_file): {e.reason or e}; "
                "it must hold PEM certificates"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_readable(setting: str, path: str) -> os.stat_result:
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise TlsConfigError(
            f"cannot read {path} ({setting}): {e.strerror or e}; check the path and that the server's "
            "OS user may read it"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TlsConfigError(f"{path} ({setting}) is not a regular file")
    return st


def _check_key_file(path: str) -> None:
    st = _check_readable("tls_key_file", path)
    if st.st_mode & 0o077:
        raise TlsConfigError(
            f"the private key file {path} (tls_key_file) has group or other access (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); it must be u=rw (0600) or less: chmod 600 {path}"
        )
