"""The project's own error type: something a user caused, told in one clear line.

Tracebacks are for bugs; an AcmError is printed as its message alone by the CLI and shown as a
notification by the TUI.
"""


class AcmError(Exception):
    """A user-caused problem with a one-line explanation (and, where there is one, the fix)."""


class ConfigError(AcmError):
    """acm.toml is unreadable, or holds an unknown key, a wrong type or an out-of-range value."""


def one_line(error: BaseException) -> str:
    """How an error reads to a user: an AcmError's own message, anything else with its type."""
    if isinstance(error, AcmError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def internal_error(error: BaseException) -> str:
    """How a bug (an exception acm did not expect) reads: one line naming it; the traceback on request."""
    first = (one_line(error).splitlines() or [type(error).__name__])[0]
    return f"internal error ({first}); ACM_DEBUG=1 shows the traceback"
