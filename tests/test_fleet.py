"""A fleet rolled by a real orchestrator: three hosts (127.0.0.2-4) behind a real HAProxy,
the shipped playbook (conf/ansible/deploy.yml) run by the real `ansible-playbook`, a load
through the balancer the whole time (keep-alive and new connections, no client retries).

A good release reaches every host; a broken one fails the play at its first host with the
rollback's reason, that host back on the previous release, the others never touched."""

import pytest

from tests.harness import HAPROXY_MISSING, Load
from tests.harness.fleet import ANSIBLE_MISSING, Fleet

pytestmark = [pytest.mark.skipif(HAPROXY_MISSING is not None, reason=str(HAPROXY_MISSING)),
              pytest.mark.skipif(ANSIBLE_MISSING is not None, reason=str(ANSIBLE_MISSING))]


@pytest.fixture
def fleet(tmp_path):
    started = Fleet(str(tmp_path))
    try:
        yield started.start()
    finally:
        started.stop()


def test_a_rolling_play_deploys_a_good_release_and_stops_a_broken_one_at_its_first_host(fleet):
    good, broken = fleet.archive("2"), fleet.archive(
        "3", before="raise RuntimeError('database url missing')")
    load = Load(fleet.proxy.url, threads=4, slow_threads=1, max_seconds=120).start()
    try:
        load.wait_count(50)
        played = fleet.play("2", good)
        assert played.returncode == 0, played.stdout + played.stderr
        assert [(h.release(), h.version()) for h in fleet.hosts] == [("2", "2")] * 3
        load.wait_count(len(load.results) + 50)

        played = fleet.play("3", broken)
        load.wait_count(len(load.results) + 50)
    finally:
        load.stop()
    output = played.stdout + played.stderr
    assert played.returncode == 2, output  # a host failed: ansible-playbook's own code
    assert "web1: release 3 not deployed (exit 3)" in output, output
    assert "database url missing" in output, output
    assert "web2" not in output.split("PLAY RECAP")[0], output  # never touched
    assert [(h.release(), h.version()) for h in fleet.hosts] == [("2", "2")] * 3
    for host in fleet.hosts:
        fleet.proxy.wait_status(host.name, "UP")
    print("through haproxy:", load.summary())
    assert load.failures() == [], load.summary()
    assert {r.version for r in load.results if r.ok} == {"1", "2"}
