"""Health answers from the worker itself, so a load balancer learns a backend is leaving.

The app is not called: a probe costs no app work, cannot fail because the app
is busy, and says nothing but the worker's state.
"""

SERVING = "serving"
LAME_DUCK = "lame duck"
RETIRING = "retiring"  # replaced while the service serves on (base.drain_health)
DRAINING = "draining"

HEADERS = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]


def answer(path, state, liveness_path):
    """A probe's answer, (status, body), for every worker class: health is 200 while the
    service serves (503 in lame duck and while it stops), liveness while the worker lives."""
    ok = state in (SERVING, RETIRING) or path == liveness_path
    return (200 if ok else 503), (state + "\n").encode()


def wrap(app, settings, state_of):
    """The app behind the health and liveness paths; `state_of()` is the worker's state now."""
    health, liveness = settings.health_path, settings.liveness_path
    if not health and not liveness:
        return app

    def with_health(environ, start_response):
        path = environ.get("PATH_INFO")
        if path not in (health, liveness):
            return app(environ, start_response)
        status, body = answer(path, state_of(), liveness)
        start_response("200 OK" if status == 200 else "503 Service Unavailable", list(HEADERS))
        return [body]
    return with_health


def unlogged_paths(settings):
    """The paths kept out of the access log: the probes', unless graceful_health_access_log."""
    if settings.health_access_log:
        return set()
    return {settings.health_path, settings.liveness_path} - {""}


def quiet(log, settings):
    """Keep health probes out of this worker's (Gunicorn's) access log."""
    paths = unlogged_paths(settings)
    if not paths:
        return
    access = log.access

    def access_unless_probe(resp, req, environ, request_time):
        if environ.get("PATH_INFO") not in paths:
            access(resp, req, environ, request_time)
    log.access = access_unless_probe
