"""Key hierarchy benchmark (issue 16, item 1): prints figures; never run as a test.

    python bench/bench_keys.py [--segments 40] [--rounds 5] [--segment-kb 1024]

Builds, in one run, two archives of the same N WAL segments encrypted with the
same passphrase:
  - "format 2": as RustyDB wrote them before the key hierarchy: each segment
    with its own scrypt salt, its data key wrapped under the KEK itself;
  - "format 3": as the archiver writes them now: one salt per process, each
    segment's data key wrapped under a key derived from the KEK.
Then measures, each in a fresh process (the KEK cache is per process, so a new
process is what a restore, --list-wal or an archiver after a restart sees):
  1. opening all N archived segments with the passphrase (unpack_segment: key,
     decryption, decompression, digest), as PITR, --list-wal and incrementals
     reading the archive do;
  2. the archiver's cost per segment: pack_segment of N segments, resolving the
     key per segment as the archiver does.
The machine is shared: format 2 and format 3 runs are interleaved, and medians
and ratios are what to quote, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from rustydb_server import crypto, keys
from rustydb_server.archive import segment_file
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.writer import BackupWriter

PASSPHRASE = "bench passphrase"
SYSTEM_ID = 7305528163928576


class SaltPerFile(keys.PassphraseSource):
    """The key source as it was before format 3: fresh KDF parameters (and so a
    fresh scrypt run) for every file written."""

    def kek_for_new_backup(self):
        params = crypto.new_kdf_params("scrypt")
        return params, self._derive(params)


def segment_bytes(segno: int, size: int) -> bytes:
    """WAL-like contents: a compressible half and a random half."""
    rnd = random.Random(segno)
    half = size // 2
    text = b"".join(b"INSERT INTO t VALUES (%d, %d);" % (i, rnd.randrange(10**6)) for i in range(half // 24 + 1))
    return text[:half] + rnd.randbytes(size - half)


def source_dir(work: str, n: int, size: int) -> list[str]:
    src = os.path.join(work, "wal")
    os.makedirs(src, exist_ok=True)
    paths = []
    for segno in range(1, n + 1):
        path = os.path.join(src, f"00000001{segno >> 32:08X}{segno & 0xFFFFFFFF:08X}")
        with open(path, "wb") as f:
            f.write(segment_bytes(segno, size))
        paths.append(path)
    return paths


def as_format_2(new_path: str, old_path: str, key) -> None:
    """The same segment (same header fields and entry) written by the format 2 layout."""
    with open(new_path, "rb") as f:
        r = BackupReader(f, key=keys.PassphraseSource(PASSPHRASE))
        header = r.header
        (entry,) = r.entries()
        data = b"".join(r.read_entry(entry.name))
    with open(old_path, "wb") as out:
        w = BackupWriter(out, header, key=key, codec=header.compression, version=2)
        w.begin_entry(entry.name)
        w.write(data)
        w.end_entry()
        w.finish()


# ---------------------------------------------------------------- workers (one process each)


def worker_open(archive: str) -> dict:
    paths = sorted(os.path.join(archive, n) for n in os.listdir(archive) if n.endswith(segment_file.ARCHIVE_SUFFIX))
    key = keys.resolve_kek(None, {keys.ENV_PASSPHRASE: PASSPHRASE})
    t0 = time.perf_counter()
    total = 0
    for p in paths:
        _name, data = segment_file.unpack_segment(p, system_id=SYSTEM_ID, key=key)
        total += len(data)
    return {"seconds": time.perf_counter() - t0, "segments": len(paths), "bytes": total}


def worker_pack(layout: str, src_dir: str, dest: str, size: int) -> dict:
    os.makedirs(dest, exist_ok=True)
    names = sorted(os.listdir(src_dir))
    t0 = time.perf_counter()
    for name in names:
        # as the archiver does: the key resolved for every segment
        key = SaltPerFile(PASSPHRASE) if layout == "2" else keys.resolve_kek(None, {keys.ENV_PASSPHRASE: PASSPHRASE})
        target = os.path.join(dest, segment_file.archive_name(name))
        if layout == "2":
            tmp = target + ".new"
            segment_file.pack_segment(
                os.path.join(src_dir, name), tmp, system_id=SYSTEM_ID, segment_size=size, codec="zstd", key=key
            )
            as_format_2(tmp, target, key)
            os.unlink(tmp)
        else:
            segment_file.pack_segment(
                os.path.join(src_dir, name), target, system_id=SYSTEM_ID, segment_size=size, codec="zstd", key=key
            )
    return {"seconds": time.perf_counter() - t0, "segments": len(names)}


def run_worker(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False, timeout=3600
    )
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


# ---------------------------------------------------------------- the comparison


def build_archives(work: str, n: int, size: int) -> tuple[str, str]:
    """Two archives of the same N segments: format 2 (a salt each) and format 3."""
    src = os.path.dirname(source_dir(work, n, size)[0])
    new, old = os.path.join(work, "archive-3"), os.path.join(work, "archive-2")
    run_worker("pack", "3", src, new, str(size))
    os.makedirs(old)
    for name in sorted(os.listdir(new)):
        as_format_2(os.path.join(new, name), os.path.join(old, name), SaltPerFile(PASSPHRASE))
    return old, new


def report(label: str, per_layout: dict[str, list[float]], n: int) -> None:
    old, new = statistics.median(per_layout["2"]), statistics.median(per_layout["3"])
    print(f"{label} ({n} segments, median of {len(per_layout['2'])} interleaved runs):")
    print(f"  format 2 (a salt per segment): {old:7.3f} s  {1000 * old / n:7.2f} ms/segment")
    print(f"  format 3 (one KEK per process): {new:7.3f} s  {1000 * new / n:7.2f} ms/segment")
    print(f"  format 3 / format 2: {new / old:.3f}  (format 2 is {old / new:.1f}x slower)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", type=int, default=40, help="archived segments per archive")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved runs of each layout")
    ap.add_argument("--segment-kb", type=int, default=1024, help="segment size in KiB (the server's default is 16384)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, *rest = args.worker
        result = worker_open(*rest) if kind == "open" else worker_pack(rest[0], rest[1], rest[2], int(rest[3]))
        print(json.dumps(result))
        return
    size = args.segment_kb * 1024
    work = tempfile.mkdtemp(prefix="bench-keys-")
    try:
        old, new = build_archives(work, args.segments, size)
        opened: dict[str, list[float]] = {"2": [], "3": []}
        packed: dict[str, list[float]] = {"2": [], "3": []}
        src = os.path.join(work, "wal")
        for r in range(args.rounds):
            order = ("2", "3") if r % 2 == 0 else ("3", "2")
            for layout in order:
                opened[layout].append(run_worker("open", old if layout == "2" else new)["seconds"])
            for layout in order:
                dest = os.path.join(work, f"pack-{layout}-{r}")
                packed[layout].append(run_worker("pack", layout, src, dest, str(size))["seconds"])
                shutil.rmtree(dest)
        report("Opening every archived segment with a passphrase (PITR, --list-wal)", opened, args.segments)
        report("Archiving (pack_segment, key resolved per segment as the archiver does)", packed, args.segments)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
