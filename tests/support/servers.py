"""Starting real server processes and running the real command-line tools in tests."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

from rustydb_client.cli import main as cli_main
from rustydb_client.client import socket_candidates

BIN = os.path.dirname(sys.executable)


def tool(name: str) -> str:
    """The installed console script, as a user would run it."""
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name} is not installed in {BIN}; run pip install -e '.[test]'")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(
    name: str, *args: str, input: str | None = None, env=None, timeout=60, check=False
) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [tool(name), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def restore_to_target(base, archive, data_dir, *target: str) -> subprocess.CompletedProcess:
    """rusty-db-restore --input BASE --archive-dir ARCHIVE --data-dir D and a target's flags."""
    return run_tool(
        "rusty-db-restore", "--input", str(base), "--archive-dir", str(archive), "--data-dir", str(data_dir), *target
    )


def _socket_search(data_dir: str, add: bool) -> None:
    """Add ``data_dir`` to (or take it from) $RUSTYDB_DATA_DIR, the data directories
    a client with no --host looks in for a server's Unix socket after /run/rustydb.

    A server whose /run/rustydb is not writable (a CI runner not root) puts its
    socket in its data directory: this is how the tests' clients, in this
    process and in the tools run_tool starts, still find it.
    """
    dirs = [d for d in os.environ.get("RUSTYDB_DATA_DIR", "").split(os.pathsep) if d and d != data_dir]
    if add:
        dirs.append(data_dir)
    if dirs:
        os.environ["RUSTYDB_DATA_DIR"] = os.pathsep.join(dirs)
    else:
        os.environ.pop("RUSTYDB_DATA_DIR", None)


class ServerProcess:
    def __init__(
        self,
        data_dir: str,
        *,
        port: int | None = None,
        http_port: int | None = None,
        extra_args=(),
        env=None,
        log_path: str | None = None,
        command: list[str] | None = None,
        https_ca_file: str | None = None,
    ):
        self.data_dir = data_dir
        # What starts the server: the installed console script unless a test
        # gives another launcher (tests/support/faulty_server.py).
        self.command = command
        self.port = port or free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.log_path = log_path or os.path.join(os.path.dirname(data_dir.rstrip("/")), f"server-{self.port}.log")
        self.proc: subprocess.Popen | None = None
        # A server with TLS on serves its HTTP API over HTTPS: reached with this CA.
        self._https = ssl.create_default_context(cafile=https_ca_file) if https_ca_file else None

    @property
    def http_url(self) -> str:
        return f"{'https' if self._https else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def socket_path(self) -> str:
        """The server's Unix socket: in /run/rustydb, else in its data directory."""
        candidates = socket_candidates(self.port, os.path.abspath(self.data_dir))
        return next((path for path in candidates if _listening(path)), candidates[0])

    def start(self, wait: bool = True) -> ServerProcess:
        _socket_search(os.path.abspath(self.data_dir), add=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                *(self.command or [tool("rusty-db-server")]),
                "--data-dir",
                self.data_dir,
                "--port",
                str(self.port),
                "--http-port",
                str(self.http_port),
                *self.extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.health()["status"] in ("healthy", "degraded"):  # serving; degraded says why
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def health(self) -> dict:
        url = f"{self.http_url}/api/v1/admin/health"
        try:
            with urllib.request.urlopen(url, timeout=2, context=self._https) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read())

    def archive_status(self) -> dict:
        url = f"{self.http_url}/api/v1/admin/archive"
        with urllib.request.urlopen(url, timeout=5, context=self._https) as r:
            return json.loads(r.read())

    def wait_archived(self, timeout: float = 40) -> dict:
        """SWITCH WAL, then wait until the archive holds every completed segment."""
        self.sql("SWITCH WAL;")
        deadline = time.monotonic() + timeout
        while (status := self.archive_status())["segments_waiting"]:
            assert time.monotonic() < deadline, f"archive not caught up: {status}"
            time.sleep(0.1)
        return status

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-8000:]
        except OSError:
            return ""

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run_tool("rusty-db-cli", "--port", str(self.port), *args, **kw)

    def sql(self, sql: str, *args: str) -> subprocess.CompletedProcess:
        """Run SQL through rusty-db-cli's own code, in this process.

        The cli as a process is tested by the tests that call ``cli``; here it
        is only the way in, and a process per statement cost 68 ms.
        """
        argv = ["--port", str(self.port), "--command", sql, *args]
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(argv, stdin=io.StringIO(), stdout=out, stderr=err)
        proc = subprocess.CompletedProcess(["rusty-db-cli", *argv], code, out.getvalue(), err.getvalue())
        if proc.returncode != 0:
            raise AssertionError(f"{sql!r} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()
            _socket_search(os.path.abspath(self.data_dir), add=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self._log.close()
        _socket_search(os.path.abspath(self.data_dir), add=False)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
            if self.proc.poll() is None:
                self.kill()


def _listening(path: str) -> bool:
    """Whether a server listens on the Unix socket ``path`` (a killed server's
    socket file stays behind, and its port may be another test's now)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()
