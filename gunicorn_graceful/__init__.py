"""gunicorn-graceful: restarts that clients never notice.

Plugs into stock Gunicorn through its three doors: worker classes
(`gunicorn_graceful.workers`), server hooks (`gunicorn_graceful.hooks`) and, for
the master, one Arbiter subclass (`gunicorn_graceful.master.arbiter`) that the
`on_starting` hook installs.
"""

__version__ = "0.1.0"
