"""Who may use the admin HTTP API, and how: a pure decision per request.

- ``GET /api/v1/admin/health`` answers everyone, but with the status and the
  version only, unless the client is trusted: it gave the bearer token, or it
  is a loopback client the API trusts (``http_api_trust_loopback``) and came
  through an allowed Host without a foreign Origin. Then the full report
  (paths, WAL positions, connections).
- Every other route needs the bearer token, compared in constant time; a
  loopback client may do without it only while ``http_api_trust_loopback``
  is on (``auto``, the default: on while no token file is set, off once one
  is).
- Browsers cannot drive the API: a request must name an allowed Host (an IP
  address, ``localhost``, or one of ``http_api_allowed_hosts``: a page on a
  name the attacker controls and rebinds to 127.0.0.1 is refused), must not
  carry a foreign Origin (the API serves no page, so every Origin is
  foreign), and a request with a body must be ``application/json`` (a form
  or ``text/plain``, which a page may send anywhere without asking, is
  refused with 415). CORS preflights are not answered: no route takes
  OPTIONS and no answer carries an ``Access-Control-*`` header.
- The token file must not be readable or writable by group or others (mode
  0600, like ``~/.pgpass``); the server refuses to start otherwise.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import stat
from dataclasses import dataclass

from .auth import is_loopback

HEALTH_PATH = "/api/v1/admin/health"
# Methods that change state (a browser may send POST anywhere without asking).
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"


class TokenFileError(Exception):
    """The token file cannot be used; the message says what to do."""


def read_token(path: str) -> str | None:
    """The bearer token in ``path`` (None when no file is set, or it is empty)."""
    if not path:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise TokenFileError(
            f"cannot read http_api_token_file {path}: {e.strerror}; fix the path or the file's permissions"
        ) from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise TokenFileError(
                f"http_api_token_file {path} is open to group or others (mode {mode:04o}); "
                f"a token anyone on the machine can read protects nothing: run chmod 600 {path}"
            )
        with os.fdopen(fd, closefd=False) as f:
            token = f.read().strip()
    finally:
        os.close(fd)
    return token or None


def trusts_loopback(setting: str, token: str | None) -> bool:
    """Whether loopback clients need no token: ``auto`` means while no token is set."""
    return setting == "on" or (setting == "auto" and token is None)


def allowed_hosts(setting: str) -> frozenset[str]:
    """The names of ``http_api_allowed_hosts``, lower case ("*" allows any)."""
    return frozenset(n.strip().lower().rstrip(".") for n in setting.split(",") if n.strip())


def host_name(host_header: str) -> str:
    """The host of a Host header, without its port or an IPv6 address's brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def host_allowed(host_header: str | None, names: frozenset[str]) -> bool:
    """An IP address (no name to rebind), localhost, or a configured name; no
    Host at all is a client that is not a browser."""
    if host_header is None:
        return True
    host = host_name(host_header)
    if "*" in names or host in names or host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Verdict:
    """What to do with one request.

    ``status`` 0: serve it; ``full`` says whether health may show its whole
    report. Otherwise answer ``status`` with ``code`` and ``message``;
    ``audit`` is the outcome to record ("denied" or "failed"), empty for a
    refusal that is no matter of privilege (415).
    """

    status: int = 0
    code: str = ""
    message: str = ""
    full: bool = True
    audit: str = ""
    by: str = ""  # how the client was trusted: "token", "loopback" (or "" when it was not)


def decide(
    method: str,
    path: str,
    headers: dict[str, str],
    client_host: str | None,
    token: str | None,
    *,
    trust_loopback_setting: str,
    allowed_host_names: frozenset[str],
) -> Verdict:
    """The verdict on one request; ``headers`` has lower-case names."""
    given = headers.get("authorization")
    foreign_origin = "origin" in headers
    host_ok = host_allowed(headers.get("host"), allowed_host_names)
    by_token = (
        token is not None
        and given is not None
        and hmac.compare_digest(given.encode("latin-1", "replace"), ("Bearer " + token).encode("latin-1", "replace"))
    )
    if token is not None and given is not None and not by_token:
        verdict = Verdict(401, "unauthorized", "missing or wrong bearer token", audit="failed")
        return verdict
    by_loopback = not by_token and trusts_loopback(trust_loopback_setting, token) and is_loopback(client_host)
    if path == HEALTH_PATH and method in ("GET", "HEAD"):
        # Everyone may ask; only a trusted client that a browser could not have sent sees it all.
        full = by_token or (by_loopback and host_ok and not foreign_origin)
        return Verdict(full=full, by="token" if by_token else "loopback" if full else "")
    if not host_ok:
        return Verdict(
            403,
            "host_not_allowed",
            f"Host {headers.get('host')!r} is not one this API answers to; use the server's IP address or "
            "localhost, or add the name to http_api_allowed_hosts",
            audit="denied",
        )
    if foreign_origin:
        return Verdict(
            403,
            "origin_not_allowed",
            f"requests from web pages (Origin {headers.get('origin')!r}) are refused: the admin API is "
            "for scripts and tools, not browsers",
            audit="denied",
        )
    if not (by_token or by_loopback):
        if token is None and not is_loopback(client_host):
            message = (
                "the HTTP API needs a bearer token for clients that are not on loopback; "
                "set http_api_token_file on the server"
            )
        else:
            message = "missing or wrong bearer token"
        return Verdict(401, "unauthorized", message, audit="denied")
    if method in WRITE_METHODS:
        content_type = headers.get("content-type")
        body_expected = method != "DELETE"
        if (body_expected or content_type is not None) and media_type(content_type) != JSON:
            return Verdict(
                415,
                "unsupported_media_type",
                f"{method} {path} takes a JSON body: send the header 'Content-Type: {JSON}' "
                f"(got {content_type or 'none'})",
                by="token" if by_token else "loopback",
            )
    return Verdict(by="token" if by_token else "loopback")
