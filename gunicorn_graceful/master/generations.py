"""The master's generation numbers and the release each one runs: one owner for both.

A HUP and an in-place USR2 begin a generation, a rollback goes back to the one
that serves, an in-place exec hands all of it to the next code. The arbiter's
`generation` reads `current` here; nothing else writes it (`tests/test_layout.py`).

Invariants:
- Numbers are never reused, a rolled-back one included: `begin` takes the one
  after the highest ever begun (`last`), also across an in-place exec.
- Each generation keeps the release the deploy link pointed to when it began
  (`release`): a rollback, a mold and an in-place exec back run that one.
- Only generations that may still run keep their release: a rollback drops the
  failed one's, a finished rollout those before it.
"""

from gunicorn_graceful import release


class Generations:
    """The wanted generation (`current`), the highest ever begun, and each one's release."""

    def __init__(self, release_link):
        self.current = self.last = 1
        self.releases = {1: release.resolve(release_link)}

    def upcoming(self):
        """The number the next `begin` takes (what a HUP's on_reload line names)."""
        return self.last + 1

    def begin(self, release_link, found=None):
        """A new generation is wanted, of the release the link points to now (or `found`:
        the one an in-place check with the mold imported): its number."""
        self.current = self.last = self.upcoming()
        self.releases[self.current] = found or release.resolve(release_link)
        return self.current

    def roll_back(self, failed, to):
        """`failed` will not serve: `to` is wanted again; `failed`'s release is dropped."""
        self.releases.pop(failed, None)
        self.current = to

    def forget(self, generation):
        """A generation replaced before it served (a HUP during a HUP) keeps no release."""
        self.releases.pop(generation, None)

    def forget_before(self, generation):
        """`generation` serves: those before it will never run again."""
        for older in [g for g in self.releases if g < generation]:
            del self.releases[older]

    def release_of(self, generation):
        return self.releases.get(generation, "")

    def export(self):
        """What an in-place exec hands the next code (`adopt`)."""
        return {"generation": self.current, "last_generation": self.last,
                "releases": dict(self.releases)}

    def adopt(self, state):
        """The numbers and releases the code before an in-place exec handed over."""
        self.current, self.last = state["generation"], state["last_generation"]
        self.releases = {int(g): r for g, r in state["releases"].items()}
