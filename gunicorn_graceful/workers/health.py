"""Health answers from the worker itself, so a load balancer learns a backend is leaving.

The app is not called: a probe costs no app work, cannot fail because the app
is busy, and says nothing but the worker's state.
"""

SERVING = "serving"
LAME_DUCK = "lame duck"
DRAINING = "draining"

_HEADERS = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]


def wrap(app, settings, state_of):
    """The app behind the health and liveness paths; `state_of()` is the worker's state now."""
    health, liveness = settings.health_path, settings.liveness_path
    if not health and not liveness:
        return app

    def answer(start_response, ok, state):
        start_response("200 OK" if ok else "503 Service Unavailable", list(_HEADERS))
        return [(state + "\n").encode()]

    def with_health(environ, start_response):
        path = environ.get("PATH_INFO")
        if path == health:
            state = state_of()
            return answer(start_response, state == SERVING, state)
        if path == liveness:
            return answer(start_response, True, state_of())
        return app(environ, start_response)
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
