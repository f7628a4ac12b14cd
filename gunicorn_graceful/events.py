"""One operator event per log line, as `event=NAME key=value ...`.

Operators grep these lines and tests assert on them, so the wording is stable
and every value is quoted only when it has to be.
"""

import re


# Control characters (C0, DEL, C1) in a value would let a client forge a line or move the
# cursor of an operator's terminal through a request path: each one is written as \xNN.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _escape(match):
    return "\\x%02x" % ord(match.group())


def _value(value):
    if isinstance(value, float):
        return "%.2f" % value
    text = str(value)
    if text == "" or any(c in text for c in ' "=') or _CONTROL.search(text):
        text = text.replace("\\", "\\\\").replace('"', '\\"')
        return '"%s"' % _CONTROL.sub(_escape, text)
    return text


def format_event(name, **fields):
    """The text of one event line: its name first, then its fields in order."""
    return "event=%s %s" % (name, format_fields(**fields)) if fields else "event=%s" % name


def format_fields(**fields):
    """`key=value ...` in order, each value quoted only when it has to be."""
    return " ".join("%s=%s" % (key, _value(value)) for key, value in fields.items())


_observers = []


def observe(callback):
    """Call `callback(name, fields)` on every event this process emits (the master's
    metrics count its lifecycle lines; a forked worker forgets it: `forget_observers`)."""
    _observers.append(callback)


def forget_observers():
    del _observers[:]


def emit(log, level, name, **fields):
    """Log one event on a Gunicorn logger (`log.info`, `log.warning`, ...)."""
    getattr(log, level)(format_event(name, **fields))
    for callback in _observers:
        callback(name, fields)


def redact(path):
    """A request path fit for logs: the query string, which may hold secrets, is cut."""
    path = path or "/"
    base, sep, _ = path.partition("?")
    return base + "?[redacted]" if sep else base
