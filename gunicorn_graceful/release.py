"""Pin each generation to the release directory it was loaded from.

With a deploy symlink (`graceful_release_link`, e.g. /srv/app/current ->
releases/42), Gunicorn's `chdir` and `sys.path` hold the link itself, so every
worker imports whatever the link points to when it boots. After a HUP rollback
that is the rejected release: a replacement for a kept worker (crash, OOM,
max_requests) would crash-loop on it. The master resolves the link when a
generation starts (at start and at each HUP), and each worker it forks loads the
app from its generation's release.
"""

import os
import sys

def resolve(link):
    """The directory `link` points to now, or "" without a link."""
    return os.path.realpath(link) if link else ""


def enter(release, link):
    """In a new worker, before the app loads: import from `release`, not from the link."""
    if not release or not link:
        return
    os.chdir(release)
    sys.path[:] = [pin(entry, release, link) for entry in sys.path]


def pin(path, release, link):
    """`path` with the link's part replaced by `release` (unchanged outside the link, or
    without one): what an in-place upgrade's exec back runs (interpreter, config, --chdir)."""
    if not release or not link:
        return path
    link = link.rstrip("/")
    if path == link or path.startswith(link + "/"):
        return release + path[len(link):]
    return path
