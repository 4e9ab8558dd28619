"""Rotating a backup's key: its data key re-wrapped under a new key-encryption
key, every chunk and the index copied byte for byte (nothing is re-encrypted).

The file keeps its format version (the version is part of the header hash every
chunk is bound to), so its data key is re-wrapped the way that format wraps it:
under a per-file key derived from the new KEK in format 3, under the KEK itself
in formats 1 and 2."""

from __future__ import annotations

from rustydb_server.fileops import REAL, FileOps
from rustydb_server.keys import KeySource

from .errors import BackupCorruptError, BackupError
from .format import DIGESTS, FOOTER, BackupSummary, pack_footer, pack_header, pack_keywrap
from .reader import BackupReader


def rotate_key(
    path: str, old_key: KeySource, new_key: KeySource, fileops: FileOps = REAL, *, block_size: int = 1 << 20
) -> BackupSummary:
    """Re-wrap the backup's data key under ``new_key``; chunks and index are
    copied byte for byte. The new file replaces ``path`` atomically; the old
    file's digest is checked during the copy so a damaged backup is never
    re-blessed with a fresh digest."""
    with open(path, "rb") as f:
        reader = BackupReader(f, key=old_key)  # WrongKeyError here if old_key is wrong
        backup_id = reader.header.backup_id
        if not reader.header.encrypted:
            raise BackupError(f"backup {backup_id} is not encrypted; there is no key to rotate")
        reader.check_layout()
        lay = reader.layout
        params, kek = new_key.kek_for_new_backup()
        keywrap = pack_keywrap(reader.core_hash, params, kek, reader.data_key, lay.version)
        header_bytes = pack_header(lay.core_bytes, keywrap, lay.version)
        shift = len(header_bytes) - lay.body_start
        kind = DIGESTS[lay.version]
        old_hash, new_hash = kind.new(lay.header_bytes), kind.new(header_bytes)
        with fileops.replace_file(path) as fd:
            fileops.write_all(fd, header_bytes)
            f.seek(lay.body_start)
            remaining = lay.file_size - FOOTER.size - lay.body_start
            while remaining:
                block = f.read(min(block_size, remaining))
                if not block:
                    raise BackupCorruptError(backup_id, "file shrank while rotating its key")
                old_hash.update(block)
                new_hash.update(block)
                fileops.write_all(fd, block)
                remaining -= len(block)
            if kind.footer_bytes(old_hash) != lay.digest:
                raise BackupCorruptError(backup_id, "whole-file digest mismatch; not rotating a damaged backup")
            new_digest = kind.footer_bytes(new_hash)
            fileops.write_all(fd, pack_footer(lay.index_offset + shift, lay.index_len, lay.index_crc, new_digest))
    with open(path, "rb") as f:
        entries = BackupReader(f, key=new_key).entries()
    return BackupSummary(len(header_bytes) + (lay.file_size - lay.body_start), new_digest.hex(), entries)
