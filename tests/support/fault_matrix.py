"""Fault injection at every durable file operation of an operation, one at a time.

A scenario (a commit, a checkpoint, an archive copy, a backup, a restore) runs
once with a recording ``FileOps`` that lists every write, fsync, rename, ...
it makes. It then runs again once per listed call and per fault, with that one
call failing:

* ``enospc``: the call raises ENOSPC (a full disk);
* ``eio``: the call raises EIO (a failing disk);
* ``crash``: the call is made, then the process "dies": the files as they are
  at that instant are set aside (what kill -9 would leave), ``Crash`` (a
  ``BaseException`` the code must not swallow) is raised, and the scenario's
  objects are abandoned; the checks then run on the files set aside.

After each run the scenario checks its invariants (an acknowledged commit is
there after recovery, an unacknowledged one wholly there or wholly absent, no
torn archive or backup under its final name, a restore target that holds the
old data or the new, an engine that recovers) and returns the problems it
found; a correct server gives none.

Used by tests/test_fault_matrix.py (a deterministic subset) and by
bench/faults.py (every call), which print the same figures.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable

from rustydb_server.fileops import FileOps

FAULTS = ("enospc", "eio", "crash")
#: How a check's problem starts when data was lost, half there or torn, or
#: does not recover (the rest: an unclean error, something left behind, an
#: operation that does not work again once the disk does).
LOST = "lost: "

_ERRNO = {"enospc": errno.ENOSPC, "eio": errno.EIO}
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Crash(BaseException):
    """The process died right after a file operation (kill -9, power kept)."""


class Injector(FileOps):
    """Real file operations that record each durable call and fail one of them.

    Counted: opening a file for writing, write, pwrite, fsync, fdatasync,
    ftruncate, rename, exchange, unlink and a directory's fsync. Only calls
    made while ``armed`` count (the scenario's setup is not under test).
    """

    def __init__(self, root: str, fault: str | None = None, at: int | None = None, on_crash=None):
        self.root = root
        self.fault = fault
        self.at = at
        self.on_crash = on_crash
        self.armed = False
        self.fired = False
        self.calls: list[tuple[str, str]] = []

    # -- bookkeeping
    def path_of(self, fd: int) -> str | None:
        return (self._names or {}).get(fd)

    def kind(self, path: str | None) -> str:
        if path is None:
            return "?"
        rel = os.path.relpath(path, self.root)
        # ids, pids, LSNs and segment numbers vary between runs: keep the shape
        return re.sub(r"[0-9A-Fa-f]{8}(-?[0-9A-Fa-f]{4,})*|\d+", "#", rel)

    def _call(self, op: str, path: str | None, fn: Callable, fd: int | None = None):
        if not self.armed:
            return fn()
        index = len(self.calls)
        self.calls.append((op, self.kind(path)))
        if index != self.at or self.fault is None:
            return fn()
        self.fired = True
        if self.fault in _ERRNO:
            # As the system call would fail: a call on a path names it, and
            # one on a descriptor gets its name the way FileOps gives it one.
            code = _ERRNO[self.fault]
            error = OSError(code, os.strerror(code) + " (injected)")
            if fd is None:
                error.filename = path
                raise error
            raise self.named(error, fd)
        fn()
        self.armed = False  # the process is gone: nothing after this is counted
        if self.on_crash is not None:
            self.on_crash()
        raise Crash(f"crash after {op} of {self.kind(path)}")

    # -- the primitives
    def open(self, path, flags, mode=0o600):
        if not flags & _WRITING:
            return super().open(path, flags, mode)
        return self._call("open", path, lambda: FileOps.open(self, path, flags, mode))

    def write(self, fd, data):
        return self._call("write", self.path_of(fd), lambda: FileOps.write(self, fd, data), fd)

    def pwrite(self, fd, data, offset):
        return self._call("pwrite", self.path_of(fd), lambda: FileOps.pwrite(self, fd, data, offset), fd)

    def fsync(self, fd):
        return self._call("fsync", self.path_of(fd), lambda: FileOps.fsync(self, fd), fd)

    def fdatasync(self, fd):
        return self._call("fdatasync", self.path_of(fd), lambda: FileOps.fdatasync(self, fd), fd)

    def ftruncate(self, fd, size):
        return self._call("ftruncate", self.path_of(fd), lambda: FileOps.ftruncate(self, fd, size), fd)

    def rename(self, src, dst):
        return self._call("rename", dst, lambda: FileOps.rename(self, src, dst))

    def exchange(self, a, b):
        return self._call("exchange", b, lambda: FileOps.exchange(self, a, b))

    def unlink(self, path):
        return self._call("unlink", path, lambda: FileOps.unlink(self, path))

    def fsync_dir(self, path):
        return self._call("fsync_dir", path, lambda: FileOps.fsync_dir(self, path))


@dataclasses.dataclass
class Case:
    """One run of a scenario with one fault at one call."""

    scenario: str
    fault: str
    at: int
    call: tuple[str, str]
    outcome: str = ""  # "ok" (acknowledged), "error" (reported), "crash"
    message: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    calls: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # every counted call made


class Scenario:
    """One operation under test. Subclasses fill in the steps.

    ``build(template)`` makes the starting files once (real FileOps);
    every run copies them to ``root`` and calls ``prepare(root, ops)``, then
    ``act(state)`` with ``ops`` armed; ``clean_error`` judges what a reported
    error says; ``after_error`` runs with faults off on the live objects
    (the operation must work again once the disk does); ``close`` abandons
    or closes the objects; ``check(root, outcome, state)`` looks at the files
    (after a crash, those it left) and returns problems.
    """

    name = "?"
    #: In CI, every k-th call only (bench/faults.py runs all).
    ci_every = 1

    def build(self, template: str) -> None:
        raise NotImplementedError

    def prepare(self, root: str, ops: Injector):
        raise NotImplementedError

    def act(self, state) -> None:
        raise NotImplementedError

    def clean_error(self, fault: str, exc: BaseException) -> list[str]:
        return []

    def after_error(self, state, fault: str, exc: BaseException) -> list[str]:
        return []

    def close(self, state, crashed: bool) -> None:
        pass

    def check(self, root: str, outcome: str, state) -> list[str]:
        raise NotImplementedError


class Matrix:
    """Runs scenarios under every fault, in a scratch directory of its own."""

    def __init__(self, workdir: str | None = None):
        self.workdir = workdir or tempfile.mkdtemp(prefix="rustydb-faults-")
        self._templates: dict[str, str] = {}
        self._serial = 0

    def template(self, scenario: Scenario) -> str:
        if scenario.name not in self._templates:
            path = os.path.join(self.workdir, f"template-{scenario.name}")
            os.mkdir(path)
            scenario.build(path)
            self._templates[scenario.name] = path
        return self._templates[scenario.name]

    def _fresh_root(self, scenario: Scenario) -> str:
        self._serial += 1
        root = os.path.join(self.workdir, f"run-{scenario.name}-{self._serial}")
        shutil.copytree(self.template(scenario), root, symlinks=True)
        return root

    def record(self, scenario: Scenario) -> list[tuple[str, str]]:
        """The durable calls the scenario makes when nothing fails."""
        case = self.run(scenario, None, -1)
        if case.outcome != "ok" or case.problems:
            raise AssertionError(f"{scenario.name} fails without any fault: {case.message} {case.problems}")
        return case.calls

    def run(self, scenario: Scenario, fault: str | None, at: int) -> Case:
        root = self._fresh_root(scenario)
        crashed = root + ".crashed"
        ops = Injector(root, fault, at, on_crash=lambda: shutil.copytree(root, crashed, symlinks=True))
        case = Case(scenario.name, fault or "none", at, ("", ""))
        state = scenario.prepare(root, ops)
        error: BaseException | None = None
        ops.armed = True
        try:
            scenario.act(state)
            case.outcome = "ok"
        except Crash as e:
            case.outcome = "crash"
            case.message = str(e)
        except Exception as e:
            case.outcome = "error"
            case.message = f"{type(e).__name__}: {e}"
            error = e
        finally:
            ops.armed = False
        case.calls = ops.calls
        if 0 <= at < len(ops.calls):
            case.call = ops.calls[at]
        if fault is not None and not ops.fired:
            case.problems.append(f"call {at} was never reached (the scenario's calls are not deterministic)")
        if fault == "crash" and ops.fired and case.outcome != "crash":
            case.problems.append(f"the simulated crash was swallowed; the operation ended {case.outcome}")
        if error is not None:
            case.problems += _judge_error(fault, error, root)
            case.problems += scenario.clean_error(fault or "none", error)
            case.problems += scenario.after_error(state, fault or "none", error)
        try:
            scenario.close(state, crashed=case.outcome == "crash")
        except Exception as e:
            case.problems.append(f"closing after the fault failed: {type(e).__name__}: {e}")
        if case.outcome == "crash":
            # Everything after the crash never happened: the files are those set aside.
            shutil.rmtree(root)
            os.rename(crashed, root)
        try:
            case.problems += scenario.check(root, case.outcome, state)
        except Exception as e:
            case.problems.append(f"{LOST}the files left cannot even be checked: {type(e).__name__}: {e}")
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(crashed, ignore_errors=True)  # a crash the code swallowed
        return case

    def cases(
        self, scenario: Scenario, *, every: int = 1, faults: Iterable[str] = FAULTS, calls=None
    ) -> Iterable[Case]:
        """Every fault at every ``every``-th call, each fault starting one call
        later than the one before, so that together they cover every call."""
        calls = calls if calls is not None else self.record(scenario)
        for n, fault in enumerate(faults):
            for at in range(n % every, len(calls), every):
                yield self.run(scenario, fault, at)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _judge_error(fault: str | None, error: BaseException, root: str) -> list[str]:
    """What every reported error must say: that the disk is full, or which file failed."""
    said = f"{error} {getattr(error, 'filename', None) or ''}"
    if "Traceback" in said:
        return [f"a traceback in the error: {said}"]
    if (
        fault == "enospc"
        and not any(words in said for words in ("No space left", "disk is full", "disk_full"))
        and getattr(error, "code", None) != "disk_full"
    ):
        return [f"a full disk not reported as one: {type(error).__name__}: {said}"]
    if fault == "eio" and root not in said:
        return [f"an I/O error that does not name the file: {type(error).__name__}: {said}"]
    return []


@dataclasses.dataclass
class Tally:
    scenario: str
    calls: int = 0
    runs: int = 0
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    problems: list[Case] = dataclasses.field(default_factory=list)

    def add(self, case: Case) -> None:
        self.runs += 1
        self.outcomes[f"{case.fault}:{case.outcome}"] += 1
        if case.problems:
            self.problems.append(case)

    def count(self, end: str) -> int:
        """Runs that ended ``end`` (ok, error, crash), whatever the fault."""
        return sum(n for key, n in self.outcomes.items() if key.endswith(":" + end))

    @property
    def lost(self) -> int:
        """Runs after which data was lost, half there or torn, or did not recover."""
        return sum(1 for case in self.problems if any(p.startswith(LOST) for p in case.problems))

    @property
    def reported_cleanly(self) -> int:
        """Runs whose failure was reported as an error that passed every check."""
        return self.count("error") - sum(1 for case in self.problems if case.outcome == "error")


def tally(matrix: Matrix, scenario: Scenario, every: int = 1) -> Tally:
    calls = matrix.record(scenario)
    t = Tally(scenario.name, calls=len(calls))
    for case in matrix.cases(scenario, every=every, calls=calls):
        t.add(case)
    return t


def first_call(matrix: Matrix, scenario: Scenario, op: str, kind: str) -> int:
    """The index of the scenario's first ``op`` on a path whose kind contains ``kind``."""
    for i, (o, k) in enumerate(matrix.record(scenario)):
        if o == op and kind in k:
            return i
    raise AssertionError(f"{scenario.name} makes no {op} of {kind}")
