"""The repository_s3_* settings a tool uses to reach s3:// repositories.

A tool runs without the server, often on another machine (a restore onto a
new one). It takes the S3 endpoint, region, addressing and credentials file
from the config file when there is one ($RUSTYDB_CONFIG or
/etc/rustydb/rustydb.toml, as --expire does), and whatever that leaves unset
from the standard AWS environment (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_SHARED_CREDENTIALS_FILE,
~/.aws/...). Never from a command-line argument, which other users see in ps.
"""

from __future__ import annotations

import os
import re
import tomllib

from ..keys import DEFAULT_CONFIG, ENV_CONFIG
from ..repository import location
from ..settings import REPOSITORY_NAME, SettingError, parse_value

NAMES = (
    "repository_s3_endpoint_url",
    "repository_s3_region",
    "repository_s3_force_path_style",
    "repository_s3_credentials_file",
    "repository_s3_part_size",
    "repository_s3_concurrency",
    "repository_s3_checksum",
    "repository_s3_stream_wait",
)


def load() -> dict:
    """The repository_s3_* values of the config file (none without one); SettingError for a bad one."""
    config = os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    if not os.path.isfile(config):
        return {}
    try:
        with open(config, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingError(f"cannot read the config file {config}: {e}") from None
    out = {}
    for name in NAMES:
        if name in table:
            value = parse_value(name, table[name])
            if name == "repository_s3_credentials_file" and value:
                value = os.path.join(os.path.dirname(os.path.abspath(config)), value)
            out[name] = value
    return out


def configure() -> None:
    """Open s3:// locations in this process with the config file's settings."""
    location.configure(load())


class UnknownRepository(SettingError):
    """--repo named a repository (N, repoN or a name) that backup_repositories does not have."""


def _config_path() -> str:
    return os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG


def configured_repositories() -> list[str]:
    """backup_repositories of the config file (with their names), [] without one."""
    config = _config_path()
    if not os.path.isfile(config):
        return []
    try:
        with open(config, "rb") as f:
            table = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingError(f"cannot read the config file {config}: {e}") from None
    if "backup_repositories" not in table:
        return []
    try:
        return parse_value("backup_repositories", table["backup_repositories"])
    except SettingError as e:
        raise SettingError(f"config file {config}: {e}") from None


def is_reference(value: str) -> bool:
    """Whether ``--repo value`` names a repository of backup_repositories (N, repoN or a
    name: a bare word) rather than being a directory or URL itself."""
    return bool(re.fullmatch(r"(?:repo)?[0-9]+", value) or REPOSITORY_NAME.fullmatch(value))


def resolve(value: str, repositories: list[str], where: str) -> str:
    """The directory or URL ``--repo value`` means among ``repositories`` (backup_repositories,
    as ``where`` has it): N or repoN the N-th (from 1), a name its repository, anything else
    itself. A bare word that names none and is no directory here is an UnknownRepository
    listing the known ones."""
    if not is_reference(value):
        return value
    number = re.fullmatch(r"(?:repo)?([0-9]+)", value)
    if number is not None and 1 <= int(number.group(1)) <= len(repositories):
        return str(repositories[int(number.group(1)) - 1])
    for repo in repositories:
        if getattr(repo, "name", None) == value:
            return str(repo)
    if number is None and os.path.isdir(value):
        return value  # a directory of that name here, as before names existed
    known = ", ".join(f"{i} {r.shown() if hasattr(r, 'shown') else r}" for i, r in enumerate(repositories, 1))
    raise UnknownRepository(
        f"no backup repository {value!r} in backup_repositories ({where}): "
        + (f"the known ones are {known}" if known else "it names none")
        + "; give a number or name from that list, or the repository's directory (./NAME for one here) "
        "or s3:// URL"
    )


def resolve_from_config(value: str) -> str:
    """``resolve`` against the config file's backup_repositories (a tool without a server)."""
    if not is_reference(value):
        return value
    return resolve(value, configured_repositories(), f"in the config file {_config_path()}")
