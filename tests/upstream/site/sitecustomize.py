"""In a server started by an upstream suite (its PYTHONPATH holds this directory): the pack's
classes in Gunicorn's places, as the plugin put them in the suite's own process."""

import os

if os.environ.get("GUNICORN_GRACEFUL_SWAP") == "1":
    from graceful_swap import swap
    swap()
