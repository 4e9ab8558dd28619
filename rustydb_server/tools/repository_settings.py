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
import tomllib

from ..keys import DEFAULT_CONFIG, ENV_CONFIG
from ..repository import location
from ..settings import SettingError, parse_value

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
