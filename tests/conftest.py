"""Fixtures: a scratch directory with a test app, and servers that are always stopped."""

import pytest

from tests.harness import Server, write_app, write_config


@pytest.fixture
def workdir(tmp_path):
    write_app(str(tmp_path), "1")
    return str(tmp_path)


@pytest.fixture
def servers():
    """Start servers with `servers(...)`; every one is stopped after the test, pass or fail.

    serve=True waits until it serves, False only starts it, None leaves the start to the test.
    """
    started = []

    def start(workdir, config_body="", serve=True, config_dir=None, pack=True, **kwargs):
        config = write_config(config_dir or workdir, body=config_body, pack=pack)
        server = Server(workdir, config, **kwargs)
        started.append(server)
        if serve is None:  # the test changes the arguments first, then starts it
            return server
        return server.start_serving() if serve else server.start()

    yield start
    for server in started:
        server.stop()
