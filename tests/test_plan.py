"""The pool's decisions on plain values (`master/plan.py`): no process, no clock, no fake."""

from hypothesis import given, settings, strategies as st

from gunicorn_graceful.master import plan
from gunicorn_graceful.master.plan import Facts, Member


def worker(pid, generation=1, ready=True, waiting_since=None, retire_reason=None):
    """A member forked in pid order (its age), spawned at time pid."""
    return Member(pid=pid, generation=generation, age=pid, spawned=float(pid), ready=ready,
                  retire_reason=retire_reason, recycle_noticed=waiting_since)


def facts(members, generation=1, workers=2, max_booting=1, recycling=True, backing_off=False):
    return Facts(tuple(members), generation, workers, max_booting, recycling, backing_off)


def test_a_new_generation_boots_within_the_limit_and_without_one():
    old = [worker(1), worker(2)]
    assert plan.decide(facts(old, generation=2, max_booting=1)).spawn == 1
    assert plan.decide(facts(old, generation=2, max_booting=0)).spawn == 2
    booting = old + [worker(3, generation=2, ready=False)]
    assert plan.decide(facts(booting, generation=2, max_booting=1)).spawn == 0


def test_a_back_off_forks_nothing_not_even_a_replacement():
    step = plan.decide(facts([worker(1, waiting_since=5.0)], workers=2, backing_off=True))
    assert (step.spawn, step.replace) == (0, 0)


def test_surplus_goes_booting_first_then_oldest_and_never_a_waiting_worker():
    members = [worker(1), worker(2), worker(3, ready=False)]
    assert plan.decide(facts(members, workers=2)).surplus == [3]
    members = [worker(1, waiting_since=1.0), worker(2), worker(3), worker(4)]
    assert plan.decide(facts(members, workers=2, recycling=False)).surplus == [2]


def test_a_waiting_worker_gets_one_replacement_at_a_time():
    members = [worker(1, waiting_since=1.0), worker(2, waiting_since=2.0)]
    step = plan.decide(facts(members, workers=2, max_booting=0))
    assert (step.spawn, step.replace, step.going) == (0, 1, [])
    draining = members + [worker(3, retire_reason="recycled")]
    assert plan.decide(facts(draining, workers=2, max_booting=0)).replace == 0


def test_a_ready_replacement_lets_the_first_waiting_worker_go_and_is_named():
    members = [worker(1, waiting_since=2.0), worker(2, waiting_since=1.0), worker(3)]
    assert plan.decide(facts(members, workers=2)).going == [(2, 3)]
    assert plan.decide(facts(members, workers=2, recycling=False)).going == []


def test_after_a_paused_spell_the_newest_of_the_others_is_named():
    members = [worker(1, waiting_since=1.0), worker(2, waiting_since=2.0),
               worker(3, waiting_since=3.0)]
    assert plan.decide(facts(members, workers=2)).going == [(1, 3)]
    assert plan.decide(facts(members[:1] + [worker(2)], workers=0)).going[0][0] == 1


def test_deadlines_stop_a_late_booter_and_kill_only_what_holds_nothing_or_outstayed():
    late = worker(1, ready=False)
    rows = [(late, True, None), (worker(2), False, None), (worker(3, ready=False), True, 10.0),
            (worker(4), False, 10.0), (worker(5), False, 0.0)]
    terminate, kill = plan.deadlines(rows, now=12.0, readiness_timeout=10.0,
                                     graceful_timeout=5.0)
    assert [pid for pid, _ in terminate] == [1]
    assert "not ready after 11.0s (graceful_readiness_timeout)" in terminate[0][1]
    assert kill == [3, 5]  # booting 2 s after SIGTERM; draining 12 s after it (5 + 1 allowed)


MEMBERS = st.lists(st.tuples(st.integers(1, 2), st.booleans(), st.one_of(st.none(), st.floats(0, 9)),
                             st.sampled_from([None, None, "recycled", "replaced"])),
                   max_size=8)


@settings(max_examples=400, deadline=None)
@given(MEMBERS, st.integers(0, 4), st.integers(0, 3), st.booleans(), st.booleans())
def test_no_plan_drops_capacity_or_forks_beyond_the_limit(rows, workers, max_booting,
                                                          recycling, backing_off):
    members = [worker(pid, generation, ready, since if ready else None, reason)
               for pid, (generation, ready, since, reason) in enumerate(rows, 1)]
    given_facts = facts(members, generation=2, workers=workers, max_booting=max_booting,
                        recycling=recycling, backing_off=backing_off)
    step = plan.decide(given_facts)
    wanted = given_facts.wanted()
    gone = set(step.surplus) | {pid for pid, _ in step.going}
    assert gone <= {m.pid for m in wanted}  # only the wanted generation's, never twice
    assert len(gone) == len(step.surplus) + len(step.going)
    assert not {m.pid for m in wanted if m.waiting} & set(step.surplus)
    serving = [m for m in wanted if m.ready and not m.waiting]
    still = [m for m in wanted if m.ready and m.pid not in gone]
    assert len(still) >= min(len(serving), workers)  # the capacity floor
    booting = sum(1 for m in wanted if not m.ready)
    if step.spawn:
        assert len(wanted) + step.spawn <= workers
        assert not max_booting or booting + step.spawn <= max_booting
    if step.replace:
        assert step.replace <= (max_booting or 1)
    if backing_off:
        assert step.spawn == step.replace == 0
