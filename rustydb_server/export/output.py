"""The export's output file: written under a temporary name and renamed when
complete, so a failed or interrupted export never leaves a file that looks
whole. "-" writes to stdout."""

from __future__ import annotations

import os
import sys
from typing import TextIO


class CountingWriter:
    """A text stream that counts the bytes (UTF-8) written through it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bytes = 0

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.bytes += len(text) if text.isascii() else len(text.encode("utf-8"))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)


class OutputFile:
    """``with OutputFile(path) as out: ...``: the file appears only if the block succeeds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.to_stdout = path == "-"
        self.tmp = None if self.to_stdout else f"{path}.partial.{os.getpid()}"
        self._file = None

    def __enter__(self) -> CountingWriter:
        if self.to_stdout:
            return CountingWriter(sys.stdout)
        if os.path.exists(self.path):
            raise FileExistsError(f"output {self.path} already exists; remove it or choose another --output")
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"directory {directory} for --output does not exist")
        # Table data is as private as the database it came from.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="", buffering=1 << 20)
        return CountingWriter(self._file)

    def __exit__(self, exc_type, *exc) -> None:
        if self.to_stdout:
            sys.stdout.flush()
            return
        try:
            if exc_type is None:
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
            if exc_type is None:
                os.rename(self.tmp, self.path)
                dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
