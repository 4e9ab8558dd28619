"""A server backup's manifest in its container header: the manifest travels
in ``extra["manifest"]``, where restore finds it to write the control file
(system id, timeline, LSNs, next txid)."""

from __future__ import annotations

from ..container.format import BackupHeader


def header_from_manifest(manifest: dict) -> BackupHeader:
    """The container header for a backup described by the server's manifest."""
    return BackupHeader(
        backup_id=manifest["backup_id"],
        backup_type=manifest["backup_type"],
        created_us=manifest["created_us"],
        server_version=manifest["server_version"],
        system_id=str(manifest["system_id"]),
        start_lsn=manifest["start_lsn"],
        end_lsn=manifest["end_lsn"],
        timeline=manifest["timeline"],
        parent_id=manifest.get("parent_id"),
        base_full_id=manifest.get("base_full_id"),
        databases=[
            {"name": d["name"], "tables": d["tables"], "size_bytes": d["size_bytes"]} for d in manifest["databases"]
        ],
        extra={"manifest": manifest},
    )


def manifest_of(header: BackupHeader) -> dict:
    manifest = header.extra.get("manifest") if isinstance(header.extra, dict) else None
    if not isinstance(manifest, dict):
        raise ValueError(
            f"backup {header.backup_id} has no manifest; it was not written by rusty-db-backup or the server"
        )
    return manifest
