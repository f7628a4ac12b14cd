"""The master's wing: everything the master process decides and does.

`arbiter` (the thin overrides of Gunicorn's Arbiter) delegates to one module per
concern: `phase`, `records`, `pool`, `recycle`, `rollout`, `binds`, `upgrade` and
`upgrade_report`, `inplace` and `relaunch`, `stop`, `status`, `files`, `systemd`,
`preflight`, `metrics`, `mold` and `mold_process`.
This wing imports the floor (settings, events, compat, the state channel) and
never the workers' wing: what it must know of the worker classes, `hooks` hands it.
"""
