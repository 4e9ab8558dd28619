"""Turning restored database files into a data directory a server starts on at once.

The restore tools write ``databases/<name>.sqlite`` into a staging directory,
then call ``install_data_dir``: it writes the format version, a control file
whose redo point is the backup's end LSN (so the server's recovery starts
there and its WAL continues from there) and the empty WAL layout.
"""

from __future__ import annotations

import os

from .. import datadir as dd
from .. import fileops as _fileops
from ..backup.manifest import Manifest
from ..wal import segment as walseg


def control_from_manifest(manifest: Manifest) -> dd.Control:
    # A WAL position at a segment boundary means "first record of that segment".
    end_lsn = walseg.normalize_lsn(manifest.end_lsn, manifest.segment_size)
    backup = {
        "backup_id": manifest.backup_id,
        "type": manifest.backup_type,
        "end_lsn": manifest.end_lsn,
        "timeline": manifest.timeline,
    }
    return dd.Control(
        system_id=manifest.system_id,
        timeline=manifest.timeline,
        segment_size=manifest.segment_size,
        state="restored",
        checkpoint_lsn=end_lsn,
        redo_lsn=end_lsn,
        next_txid=manifest.next_txid,
        last_commit_time_us=manifest.last_commit_time_us,
        last_backup=backup,
        last_full_backup=backup if manifest.backup_type.is_full_base else None,
    )


def install_data_dir(
    staging: str, manifest: Manifest, control: dd.Control | None = None, fileops: _fileops.FileOps = _fileops.REAL
) -> dd.Control:
    """Write version, control and WAL layout around already-written database files."""
    ddir = dd.DataDir(staging, fileops)
    ddir.create_layout()
    for name in ddir.list_databases():
        os.chmod(ddir.database_path(name), 0o600)
    control = control or control_from_manifest(manifest)
    fileops.write_file_atomic(ddir.join(dd.VERSION_FILE), f"{dd.FORMAT_VERSION}\n".encode())
    ddir.write_control(control)
    fileops.fsync_dir(ddir.databases_dir)
    fileops.fsync_dir(ddir.path)
    return control
