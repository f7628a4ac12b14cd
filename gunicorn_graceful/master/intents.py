"""Every HUP the master is sent, and what became of it: what `gunicorn-graceful reload` follows.

A deploy that was asked for must not silently not happen. Invariants:
- Each HUP gets the next number (`seq`). It ends in exactly one record: deferred
  (it waits for the phase), booting, done, rolled_back, config_failed,
  superseded (a newer HUP replaced its generation while it booted), refused (lame
  duck, stopping), forwarded (a USR2 hand-over passed it to the new master) or
  interrupted (the master stopped before its generation was ready).
- At most one HUP waits: HUPs deferred while one waits join its record (`first_seq`
  to `seq`), so ten HUPs during a boot make one reload, of the code on disk when it
  starts.
- Each record says when its last HUP was handled (`asked`) and when its config
  was loaded (`started`), in CLOCK_MONOTONIC seconds, which every process of the
  host shares: a caller that noted the time before it sent its HUP knows which
  record carries its intent out.
Whether a HUP runs, waits or is refused is decided by `core` (`phase.DEFERRALS`,
`phase.REFUSALS`); this module only keeps the records.
"""

from gunicorn_graceful import clock
from gunicorn_graceful.events import emit

KEEP = 8  # records kept in the status file: a caller polls it ten times a second
TERMINAL = ("done", "rolled_back", "config_failed", "superseded", "refused", "forwarded",
            "interrupted")


class Reloads:
    """The HUPs of one master: their numbers, the one waiting, and the last KEEP records."""

    def __init__(self, log, pid):
        self.log, self.pid = log, pid
        self.seq = 0
        self.records = []
        self.pending = None   # the record of the HUP(s) waiting for the phase
        self.booting = None   # the record of the reload whose generation boots

    def arrived(self):
        """A HUP arrived: its number."""
        self.seq += 1
        return self.seq

    def defer(self, reason):
        """The phase cannot start a reload now: this HUP waits (joining one that waits)."""
        if self.pending is None:
            self.pending = self.add(state="deferred", reason=reason)
        self.pending.update(seq=self.seq, asked=round(clock.monotonic(), 3), reason=reason)
        emit(self.log, "info", "reload.deferred", pid=self.pid, seq=self.seq,
             first_seq=self.pending["first_seq"], reason=reason)

    def refuse(self, reason):
        """Running it later would be wrong (lame duck, stopping): refused, with the reason."""
        record = self.take_pending() or self.add()
        self.end(record, "refused", reason, seq=self.seq)
        emit(self.log, "error", "reload.refused", pid=self.pid, seq=record["seq"], reason=reason)

    def refuse_pending(self, reason):
        """The master stops: the HUP that waits will not run."""
        if self.pending is not None:
            self.refuse(reason)

    def start(self, generation, release):
        """Its config loaded: the generation that boots for the waiting HUP(s) or this one.
        A generation that still booted is superseded by it."""
        record = self.take_pending() or self.add()
        if self.booting is not None:
            self.end(self.booting, "superseded", "HUP %s replaced generation %s while it "
                     "booted" % (record["first_seq"], self.booting["generation"]),
                     superseded_by=record["seq"])
        record.update(state="booting", generation=generation, release=release,
                      started=round(clock.monotonic(), 3), reason="")
        self.booting = record

    def config_failed(self, reason):
        """Its config did not load: nothing changed (a generation that boots goes on)."""
        self.end(self.take_pending() or self.add(), "config_failed", reason)

    def finish(self, state_name, reason=""):
        """The booting generation ended: done, rolled_back or interrupted."""
        if self.booting is not None:
            self.end(self.booting, state_name, reason)
            self.booting = None

    def forward(self, new_master):
        """A USR2 hand-over: the new master runs the waiting HUP (the caller sent it there)."""
        if self.pending is not None:
            self.end(self.take_pending(), "forwarded", "handed to new master %s" % new_master,
                     to=new_master)
            emit(self.log, "info", "reload.forwarded", pid=self.pid, new_master=new_master)

    def take_pending(self):
        record, self.pending = self.pending, None
        return record

    def add(self, **fields):
        now = round(clock.monotonic(), 3)
        record = {"seq": self.seq, "first_seq": self.seq, "state": "booting", "reason": "",
                  "generation": None, "release": "", "asked": now, "started": None,
                  "ended": None}
        record.update(fields)
        self.records.append(record)
        kept = [r for r in self.records if r is self.pending or r is self.booting]
        while len(self.records) > KEEP:  # the oldest ended record goes first
            self.records.remove(next(r for r in self.records if not any(r is k for k in kept)))
        return record

    def end(self, record, state_name, reason, **fields):
        record.update(state=state_name, reason=reason, ended=round(clock.monotonic(), 3),
                      **fields)

    def export(self):
        """What crosses an in-place exec (the records are plain data)."""
        return {"seq": self.seq, "records": self.records,
                "pending": self.records.index(self.pending) if self.pending else None,
                "booting": self.records.index(self.booting) if self.booting else None}

    def adopt(self, state):
        self.seq, self.records = state["seq"], state["records"]
        self.pending = self.records[state["pending"]] if state["pending"] is not None else None
        self.booting = self.records[state["booting"]] if state["booting"] is not None else None
