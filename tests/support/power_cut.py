"""A simulated power cut for an in-process engine: what the disk would hold.

``PowerCutDisk`` follows every write and sync the engine makes to its data
directory, through both seams: its ``FileOps`` (our WAL, the control file,
everything durable the server writes itself) and ``fileops.sqlite_vfs``, a
SQLite VFS that inherits the default one and notes what SQLite writes and
syncs (databases and their -wal). For each file it keeps its *durable image*:
the bytes at its last fsync/fdatasync (renames and unlinks move or drop the
image; a file that existed before tracking began counts as durable as it was).

At the ``cut_at``-th write or sync (of kind ``cut_kind``, if given: "flush",
our WAL's fdatasync, which follows SQLite's commit of the record it makes
durable; "copy", a checkpoint's write into a database file; "sync", any
fsync; any other kind: only when the test calls ``take_picture``) the disk
takes a picture of the directory:
for every file, its durable image and what it holds at that instant (the
writes since the last sync may or may not have reached the platters). The
engine can go on; only the picture counts. ``materialize`` then writes a
directory as the power cut left it, choosing for each file at random between
the two (a seeded ``random.Random``): every un-fsynced tail dropped, some
kept, in any mix across files.
"""

from __future__ import annotations

import itertools
import os
import threading

import apsw

from rustydb_server.fileops import FileOps

_names = itertools.count()


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class PowerCutDisk:
    def __init__(self, root: str, cut_at: int, cut_kind: str | None = None):
        self.root = os.path.abspath(root)
        self.cut_at = cut_at
        self.cut_kind = cut_kind
        self.ops = 0
        self.lock = threading.RLock()
        self.images: dict[str, bytes | None] = {}
        self.picture: dict[str, tuple[bytes | None, bytes | None]] | None = None
        # What the test records at the moment of the cut (acknowledged
        # commits, rows a reader was answered with): set by ``on_cut``.
        self.on_cut = None
        self.at_cut = None
        self.fileops = CutFileOps(self)
        self.vfs = CutVFS(self, f"powercut{next(_names)}")
        self.fileops.sqlite_vfs = self.vfs.name

    @property
    def cut(self) -> bool:
        return self.picture is not None

    def _inside(self, path: str) -> bool:
        return os.path.abspath(path).startswith(self.root + os.sep)

    def track(self, path: str) -> None:
        """First sight of ``path``: as it is now, it is durable."""
        path = os.path.abspath(path)
        with self.lock:
            if path not in self.images and self._inside(path):
                self.images[path] = _read(path)

    def op(self, kind: str = "write") -> None:
        """A write or sync is about to happen: the cut may come first."""
        with self.lock:
            if self.picture is not None:
                return
            if (
                self.cut_kind is not None
                and kind != self.cut_kind
                and not (self.cut_kind == "sync" and kind == "flush")
            ):
                return
            self.ops += 1
            if self.ops >= self.cut_at:
                self.take_picture()

    def take_picture(self) -> None:
        with self.lock:
            if self.picture is not None:
                return
            picture = {}
            for directory, _dirs, files in os.walk(self.root):
                for name in files:
                    path = os.path.join(directory, name)
                    picture[path] = (self.images.get(path, _read(path)), _read(path))
            for path, image in self.images.items():
                picture.setdefault(path, (image, None))
            self.picture = picture
            if self.on_cut is not None:
                self.at_cut = self.on_cut()

    def synced(self, path: str) -> None:
        path = os.path.abspath(path)
        with self.lock:
            if self.picture is None and self._inside(path):
                self.images[path] = _read(path)

    def renamed(self, src: str, dst: str) -> None:
        src, dst = os.path.abspath(src), os.path.abspath(dst)
        with self.lock:
            if self.picture is None and self._inside(dst):
                self.images[dst] = self.images.pop(src, None)

    def removed(self, path: str) -> None:
        path = os.path.abspath(path)
        with self.lock:
            if self.picture is None and self._inside(path):
                self.images[path] = None

    def materialize(self, target: str, rng) -> dict[str, str]:
        """Write the directory the cut left into ``target``; return, per file
        whose two states differ, which one was chosen ("durable"/"current").

        ``rng`` chooses: a ``random.Random`` (each file at random), or a
        function of the file's path relative to the directory that says
        whether its current content reached the disk."""
        if self.picture is None:
            self.take_picture()
        chosen = {}
        for path, (durable, current) in sorted(self.picture.items()):
            rel = os.path.relpath(path, self.root)
            if rel.endswith("-shm"):
                continue  # SQLite rebuilds it from the -wal
            content = durable
            if durable != current:
                keep_current = rng.random() < 0.5 if callable(getattr(rng, "random", None)) else rng(rel)
                content = current if keep_current else durable
                chosen[rel] = "current" if keep_current else "durable"
            if content is None:
                continue
            out = os.path.join(target, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(content)
        return chosen

    def close(self) -> None:
        self.vfs.unregister()


class CutFileOps(FileOps):
    def __init__(self, disk: PowerCutDisk):
        self.disk = disk

    def open(self, path, flags, mode=0o600):
        self.disk.track(os.fsdecode(path))
        return super().open(path, flags, mode)

    def _path(self, fd: int) -> str:
        return (self._names or {}).get(fd, "")

    def write(self, fd, data):
        self.disk.op()
        return super().write(fd, data)

    def pwrite(self, fd, data, offset):
        self.disk.op()
        return super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self.disk.op("sync")
        super().fsync(fd)
        self.disk.synced(self._path(fd))

    def fdatasync(self, fd):
        self.disk.op("flush")
        super().fdatasync(fd)
        self.disk.synced(self._path(fd))

    def rename(self, src, dst):
        self.disk.op()
        self.disk.track(os.fsdecode(dst))
        super().rename(src, dst)
        self.disk.renamed(os.fsdecode(src), os.fsdecode(dst))

    def unlink(self, path):
        self.disk.op()
        super().unlink(path)
        self.disk.removed(os.fsdecode(path))


class CutVFSFile(apsw.VFSFile):
    def __init__(self, disk: PowerCutDisk, filename, flags):
        self.disk = disk
        self.path = filename.filename() if isinstance(filename, apsw.URIFilename) else filename
        if self.path:
            disk.track(self.path)
        super().__init__("", filename, flags)

    def xWrite(self, data, offset):
        copy = self.path and self.path.endswith(".sqlite")
        self.disk.op("copy" if copy else "write")
        super().xWrite(data, offset)

    def xTruncate(self, size):
        self.disk.op()
        super().xTruncate(size)

    def xSync(self, flags):
        self.disk.op("sync")
        super().xSync(flags)
        if self.path:
            self.disk.synced(self.path)


class CutVFS(apsw.VFS):
    def __init__(self, disk: PowerCutDisk, name: str):
        self.disk = disk
        self.name = name
        super().__init__(name, "")

    def xOpen(self, name, flags):
        return CutVFSFile(self.disk, name, flags)

    def xDelete(self, filename, syncdir):
        self.disk.op()
        super().xDelete(filename, syncdir)
        self.disk.removed(filename)
