"""Running one harness under atheris (``python -m fuzz.<target> [libFuzzer options] CORPUS``).

``--seeds DIR`` writes the target's seed inputs to DIR and exits. When
RUSTYDB_FUZZ_STATS names a file, the number of inputs run and the first
failure (its exception, where it was raised, the input) are written there as
JSON, so a runner can count executions even when the run stops at a crash.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterable

STATS_ENV = "RUSTYDB_FUZZ_STATS"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def crash_signature(exc: BaseException) -> str:
    """The exception's type and where it was raised (and, if that is in a
    library, the innermost frame of the project's code that called it): two
    inputs failing the same way count as one crash."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
    if not frames:
        return type(exc).__name__
    where = f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
    ours = [f for f in frames if f.filename.startswith(_ROOT)]
    if ours and ours[-1] is not frames[-1]:
        where += f" (from {os.path.basename(ours[-1].filename)}:{ours[-1].lineno})"
    return f"{type(exc).__name__} at {where}"


def write_seeds(directory: str, seeds: Iterable[bytes]) -> int:
    os.makedirs(directory, exist_ok=True)
    count = 0
    for seed in seeds:
        name = hashlib.sha1(seed).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(seed)
        count += 1
    return count


_OURS = ("rustydb_client", "rustydb_server", "fuzz")


def _functions_of(namespace: dict, module: str):
    for obj in list(namespace.values()):
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        if isinstance(obj, property):
            yield from (f for f in (obj.fget, obj.fset, obj.fdel) if f is not None)
        elif isinstance(obj, type) and obj.__module__ == module:
            yield from _functions_of(dict(vars(obj)), module)
        elif isinstance(obj, types.FunctionType) and obj.__module__ == module:
            yield obj


def instrument_ours(atheris) -> int:
    """Coverage instrumentation for this project's code only, in place: the
    whole interpreter's (atheris.instrument_all) takes a quarter of a minute
    at every start, and the libraries under it are not what is fuzzed."""
    done = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_OURS):
            continue
        for func in _functions_of(dict(vars(module)), name):
            atheris.instrument_func(func)
            done += 1
    return done


def main(check: Callable[[bytes], None], seeds: Callable[[], Iterable[bytes]]) -> None:
    args = sys.argv[1:]
    if args[:1] == ["--seeds"]:
        write_seeds(args[1], seeds())
        return
    import atheris  # only here: the checks themselves run without it (hypothesis tests)

    stats_path = os.environ.get(STATS_ENV)
    runs = 0

    def one_input(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            check(data)
        except BaseException as exc:
            if stats_path:
                with open(stats_path, "w") as f:
                    json.dump(
                        {
                            "runs": runs,
                            "crash": crash_signature(exc),
                            "traceback": "".join(traceback.format_exception(exc)),
                            "input": data.hex(),
                        },
                        f,
                    )
            raise

    instrument_ours(atheris)
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()
