"""A client with no --host finds the server's Unix socket in the data directory
(--data-dir or $RUSTYDB_DATA_DIR) when the server could not use /run/rustydb.

The server is given a unix_socket_directory it cannot create (under
/dev/null), as a server whose /run/rustydb is not writable, so its socket goes
in its data directory; the real rusty-db-cli and rusty-db-backup then reach it
there, as the superuser, with no password.
"""

from __future__ import annotations

import os

from tests.support.servers import run_tool

NO_KEYS = {"RUSTYDB_BACKUP_KEY_FILE": "", "RUSTYDB_BACKUP_PASSPHRASE": ""}


def test_no_host_finds_the_socket_in_the_data_directory(server_factory, tmp_path):
    conf = tmp_path / "rustydb.toml"
    conf.write_text('unix_socket_directory = "/dev/null/rustydb"\n')
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    data_dir = os.path.abspath(srv.data_dir)
    assert os.path.dirname(srv.socket_path) == data_dir
    assert "the Unix socket goes in the data directory" in srv.log()
    port = str(srv.port)

    # Not told where the data directory is: no socket in /run/rustydb, so TCP,
    # which needs a password.
    lost = run_tool("rusty-db-cli", "--port", port, "-c", "SHOW role", env={"RUSTYDB_DATA_DIR": ""})
    assert lost.returncode == 1 and "requires a password" in lost.stderr

    by_flag = run_tool(
        "rusty-db-cli", "--port", port, "--data-dir", data_dir, "--csv", "-c", "SHOW role", env={"RUSTYDB_DATA_DIR": ""}
    )
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout.splitlines()[1] == "rustydb"  # the superuser: peer authentication on the socket

    by_env = run_tool("rusty-db-cli", "--port", port, "-c", "SHOW role", env={"RUSTYDB_DATA_DIR": data_dir})
    assert by_env.returncode == 0, by_env.stderr

    out = tmp_path / "full.backup"
    backup = run_tool(
        "rusty-db-backup",
        "--type",
        "full",
        "--output",
        str(out),
        "--port",
        port,
        env={"RUSTYDB_DATA_DIR": f"/nonexistent:{data_dir}", **NO_KEYS},
    )
    assert backup.returncode == 0, backup.stderr
    assert out.exists()
