import pytest

from tests.support.servers import ServerProcess

pytest_plugins = ["tests.support.fixtures", "tests.support.seaweed"]


@pytest.fixture
def server_factory(tmp_path):
    started = []

    def make(name="data", **kw):
        proc = ServerProcess(str(tmp_path / name), **kw)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


@pytest.fixture
def server(server_factory):
    with server_factory() as proc:
        yield proc
