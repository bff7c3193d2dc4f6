"""The project's own error type: something a user caused, told in one clear line.

Tracebacks are for bugs; an AcmError is printed as its message alone by the CLI and shown as a
notification by the TUI. A full disk or a file size limit is the user's too, whichever library
hit it: `write_failure` gives every writer the same words for it.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import os
import re
import select
import signal
import sys
import threading
from collections.abc import Callable, Iterator


class AcmError(Exception):
    """A user-caused problem with a one-line explanation (and, where there is one, the fix)."""


class ConfigError(AcmError):
    """acm.toml is unreadable, or holds an unknown key, a wrong type or an out-of-range value."""


INTERRUPTED = 130  # a command's exit status when Ctrl-C ended it (128 + SIGINT), as shells report it

# A polite kill: SIGTERM (`kill`, `timeout`, a service manager) or a hang-up (SIGHUP: the terminal
# went with a dropped SSH connection)
POLITE_KILLS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))

_POLITE_KILLS: list[int] = []  # the polite kills the running command was sent
_DONE: list[int] = []  # the running command's status, once it has done its work and said so
_AS_THE_PROGRAM: list[bool] = []  # set by the `acm` program: the process ends with its command


def ending_with_the_command() -> None:
    """The process ends once its command is done (the `acm` program, not a test calling it): a
    polite kill that comes after that ends it at once with the command's status, not the kill's,
    and so does the interpreter's exit, once acm's threads are joined and the exit handlers have
    run (this one, registered first, runs last), past the libraries' teardown, where a kill ended
    the process with 143 in 38 of 40 tries after an export had done its work and said so."""
    _AS_THE_PROGRAM.append(True)
    atexit.register(_leave)


def _leave() -> None:
    if _DONE:
        _end_now(0, None)


def command_done(status: int) -> int:
    """The command has done its work and said so: its exit status (`killed_status`'s), which a
    polite kill from now on does not change (it stops nothing: in the `acm` program it ends the
    process at once, its output flushed, with this status)."""
    _DONE[:] = [killed_status(status)]
    return _DONE[0]


def _end_now(signum, frame) -> None:
    """A polite kill once the command is done: the process ends here, with the command's status."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_DONE[0] if _DONE else 128 + signum)


def politely_killed() -> bool:
    """Whether the running command was sent a polite kill (then it ends, where Ctrl-C alone would
    not: a chat goes back to its prompt after Ctrl-C)."""
    return bool(_POLITE_KILLS)


def killed_status(status: int) -> int:
    """A command's exit status once it has ended: where Ctrl-C's status came of a polite kill, the
    kill's own, as shells report it (143 for SIGTERM, 129 for a hang-up)."""
    return 128 + _POLITE_KILLS[0] if _POLITE_KILLS and status == INTERRUPTED else status


MAIN_THREAD_SIGNALS = (signal.SIGINT, *POLITE_KILLS)


@contextlib.contextmanager
def signals_for_the_main_thread() -> Iterator[None]:
    """Threads started inside (by imports: NumPy's BLAS pool) are born with Ctrl-C, SIGTERM and
    SIGHUP blocked, so the system delivers those to the main thread, as `leave_signals_to_main`
    does for acm's own threads; the main thread's mask is as it was after."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def leave_signals_to_main() -> None:
    """Block Ctrl-C, SIGTERM and SIGHUP in the calling thread and in the threads it starts (MLX's own
    among them), so the system delivers them to the main thread: one taken by another thread only
    sets Python's flag, which a main thread asleep in a system call (a chat waiting at its prompt)
    never looks at, and the signal is lost until its next input."""
    if hasattr(signal, "pthread_sigmask") and threading.current_thread() is not threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP that come inside the block are noted, and the first is handled as
    the block ends, by the handler in force before it (a Python one is called, the system's default
    acts): a few steps that must happen together (a process started and its pid recorded) are never
    cut between them. Their mask is left alone, so a process started inside keeps them. Only the main
    thread may set a handler; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: came.append(signum)) for sig in MAIN_THREAD_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        if came:
            handler = before[came[0]]
            if callable(handler):
                handler(came[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(came[0])


@contextlib.contextmanager
def polite_kill_as_ctrl_c() -> Iterator[None]:
    """A polite kill (SIGTERM, or SIGHUP: the SSH connection dropped) handled as Ctrl-C is, so what
    is under way stops the way Ctrl-C stops it: a training stage at its next step with a checkpoint,
    on one rank or many, a pipeline's stage likewise. Only the first counts: a second never turns
    into Ctrl-C's "twice: at once", which would end the process before its checkpoint is written.
    `politely_killed` says whether one came (`killed_status` gives the exit status); one that comes
    once the command is done (`command_done`) stops nothing, and in the `acm` program ends the
    process with the command's status (`ending_with_the_command`). A hang-up that is ignored
    (`nohup acm ...`) stays ignored. Only the main thread may set a handler."""
    _POLITE_KILLS.clear()
    _DONE.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if _DONE:
            if _AS_THE_PROGRAM:
                _end_now(signum, frame)
            return
        _POLITE_KILLS.append(signum)
        if len(_POLITE_KILLS) == 1:
            raise KeyboardInterrupt

    before = {sig: signal.signal(sig, stop) for sig in POLITE_KILLS if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, _end_now if _AS_THE_PROGRAM and _DONE else handler)


def exit_status(e: BaseException) -> int:
    """The status a process ends with when `e` leaves its main: SystemExit's own (argparse's 2 for a
    bad argument, 0 for --help), 130 for Ctrl-C, else 1."""
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1


def interrupted(say: Callable[[str], None], kept: str, again: str) -> int:
    """A command that Ctrl-C stopped with its work saved: its last line (what it kept, the command
    that continues) and its exit status, so a script sees that it did not finish."""
    say(f"interrupted: {kept}; `{again}` continues")
    return INTERRUPTED


DISK_FULL = "disk full"
TOO_LARGE = "file too large (over the file size limit, ulimit -f)"
FULL_OR_LIMIT = "disk full or over the file size limit (ulimit -f)"
# The failures that carry no errno: MLX's RuntimeError "[write] Unable to write 48265 bytes to file."
# and NumPy's OSError "117228 requested and 1436 written" (a short write in ndarray.tofile).
MLX_WRITE = re.compile(r"^\[write\] ")
NUMPY_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")


def write_failure(error: BaseException) -> str | None:
    """Why a write failed, in a user's words, when the disk is full or a file over its size limit,
    whether the system, MLX or NumPy said so; None for any other error."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DISK_FULL
    if isinstance(error, OSError) and error.errno == errno.EFBIG:
        return TOO_LARGE
    text = str(error)
    if (isinstance(error, RuntimeError) and MLX_WRITE.match(text)
            or isinstance(error, OSError) and error.errno is None and NUMPY_SHORT_WRITE.match(text)):
        return FULL_OR_LIMIT
    return None


# What reading a file back raises when it holds JSON of the wrong shape: a missing key, a wrong type.
READ_BACK_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError)


@contextlib.contextmanager
def read_back(what: str, fix: str) -> Iterator[None]:
    """Use a file acm wrote (a manifest, metadata, results): one of the wrong shape is one line
    naming it and the fix, not a traceback from deep in the code that read a field."""
    try:
        yield
    except READ_BACK_ERRORS as e:
        detail = (str(e).splitlines() or [""])[0][:120] or type(e).__name__
        raise AcmError(f"{what} is damaged ({detail}): {fix}") from None


def one_line(error: BaseException) -> str:
    """How an error reads to a user: an AcmError's own message, a full disk as `write_failure` says
    it, anything else with its type."""
    if isinstance(error, AcmError):
        return str(error)
    why = write_failure(error)
    if why is not None:
        name = getattr(error, "filename", None)
        return why + (f": {name}" if name else "")
    if isinstance(error, OSError) and error.strerror:  # the system's words and the file, not Python's
        return os_error_text(error)
    return f"{type(error).__name__}: {error}"


def internal_error(error: BaseException) -> str:
    """How a bug (an exception acm did not expect) reads: one line naming it; the traceback on request.
    A write failure that reached this far is no bug: it reads as the disk message."""
    first = (one_line(error).splitlines() or [type(error).__name__])[0]
    return first if write_failure(error) else f"internal error ({first}); ACM_DEBUG=1 shows the traceback"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line, `acm: error: ...`, and exits with 2 (`acm`, `acm-tui`)."""

    def error(self, message: str):
        from core.escapes import visible

        where = "" if self.prog == "acm" else f"{self.prog}: "  # `acm: error: acm: ...` says acm twice
        said = visible(f"{message}{self._dashed_value(message)}")  # what was typed, its control characters escaped
        self.exit(2, f"acm: error: {where}{said} (see {self.prog} --help)\n")

    def _dashed_value(self, message: str) -> str:
        """Where a value that starts with '-' (a prompt, a setting's value) was read as an option and
        the command then lacks a value, how to give it: argparse says only what is missing."""
        given = getattr(self, "_given", [])
        if message.endswith("expected one argument"):  # `argument -t/--time: expected one argument`
            names = message.removeprefix("argument ").split(":")[0].split("/")
            at = next((i for i, a in enumerate(given) if a in names), None)
            value = given[at + 1] if at is not None and at + 1 < len(given) else ""
            return f"; {value!r} reads as an option: give it as {names[-1]}={value}" if self._dashed(value) else ""
        if "arguments are required" in message and (value := next(filter(self._dashed, given), None)):
            return (f"; {value!r} reads as an option: give the options first, then -- and the value "
                    f"({self.prog} [OPTIONS] -- {value})")
        return ""

    def _dashed(self, arg: str) -> bool:
        """A single-dash word that is none of this command's options, nor one with its value attached
        (`-cacm.toml`), nor a negative number."""
        known = {option for action in self._actions for option in action.option_strings}
        return (arg.startswith("-") and not arg.startswith("--") and len(arg) > 1 and arg not in known
                and arg[:2] not in known and not self._negative_number_matcher.match(arg))

    def parse_known_args(self, args=None, namespace=None):
        """As argparse's, noting the innermost command that was left arguments it does not know (a
        command's parser parses before the parser that named it returns)."""
        self._given = list(sys.argv[1:] if args is None else args)  # what `_dashed_value` looks through
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(namespace, "_left_by"):
            namespace._left_by = self
        return namespace, extras

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but unknown arguments are refused by the command they were given to, whose
        --help lists what it takes."""
        namespace, extras = self.parse_known_args(args, namespace)
        left_by = vars(namespace).pop("_left_by", self)
        if extras and left_by is not self:  # one of ours after the command: `acm runs list -c FILE`
            ours = {option for action in self._actions for option in action.option_strings}
            if misplaced := next((n for n in (x.split("=")[0] for x in extras) if n in ours), None):
                self.error(f"{misplaced} goes before the command: {self.prog} {misplaced} ... COMMAND")
        if extras:
            left_by.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


# What writing to an output whose reader went raises: Python's BrokenPipeError, or Rich's console's
# SystemExit(1) (it silences the output first)
READER_GONE = (BrokenPipeError, SystemExit)


def written_unless_lost(write: Callable, what) -> BaseException | None:
    """`write(what)`; where it failed because no one reads the output any more (a pipe's reader went,
    `| head`; Rich's console says so; the terminal hung up, EIO: the SSH connection dropped, its
    hang-up signal not yet come), that error, returned; any other goes up."""
    try:
        write(what)
    except (*READER_GONE, OSError) as e:
        if isinstance(e, READER_GONE) or e.errno == errno.EIO:
            return e
        raise
    return None


class OutputGone(BrokenPipeError):
    """The reader of acm's output went (`acm train ... 2>&1 | head`) while a stage ran: the stage
    stopped at its next step with a checkpoint, and the command ends quietly with 1."""

    def __init__(self):
        super().__init__(errno.EPIPE, "the output's reader has gone")


def run_command(body: Callable[[], int], quiet_pipe: bool = False) -> int:
    """A command's exit status (`acm`, a training process acm starts): what `body` returns, or the
    error that ended it as one `acm: error:` line on stderr and 2 (Ctrl-C: 130). With `quiet_pipe`
    (`acm`), a reader of the output that stopped reading (`acm runs | head`) ends it quietly with 1.
    A bug's traceback shows with ACM_DEBUG=1."""
    try:
        return body()
    except AcmError as e:
        return fail(str(e))
    except KeyboardInterrupt:
        print("acm: interrupted", file=sys.stderr)
        return INTERRUPTED
    except OutputGone:  # stderr's reader may be the one that went (`2>&1 | head`)
        return _quiet_exit(sys.stderr)
    except OSError as e:  # a disk, a permission, a path: the system's words and the file
        if isinstance(e, BrokenPipeError) and quiet_pipe and _stdout_closed():
            return _quiet_exit()
        return fail(os_error_text(e))
    except Exception as e:  # a bug: still one line
        if os.environ.get("ACM_DEBUG"):
            raise
        return fail(internal_error(e))


def os_error_text(e: OSError) -> str:
    """A system error as a user reads it: the system's words, then the file; where a file stands in
    the way of a folder acm makes or reads (data/tokenizer made a file), what to do about it."""
    text = (f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
            + (f" -> {e.filename2}" if getattr(e, "filename2", None) else ""))
    in_the_way = isinstance(e, NotADirectoryError) or (
        isinstance(e, FileExistsError) and e.filename and os.path.lexists(e.filename)
        and not os.path.isdir(e.filename))
    return text + (" (a file stands where acm keeps a folder: move it aside)" if in_the_way else "")


# What asking standard output for its file can raise: None, a stream without one, a closed one
_NO_FILE = (AttributeError, ValueError, OSError)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (so a broken pipe was the output's,
    not a socket's or a child's): the system reports an error or a hang-up on it."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except _NO_FILE:  # no file behind it, or no poll here
        return False


def _quiet_exit(*streams) -> int:
    """Status 1 without a word, as Rich's console and Python's own advice have it for a closed pipe:
    what is left in the output's buffer (and in `streams`', stderr where it was the one closed) goes
    nowhere, so the interpreter's exit cannot fail on it."""
    for stream in (sys.stdout, *streams):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except _NO_FILE:  # an output with no file behind it: nothing to silence
            pass
    return 1


def fail(message: str) -> int:
    """The error's one line, its control characters escaped (a run folder's or a file's name can
    hold them: on a terminal they would act, in a log they would garble it)."""
    from core.escapes import visible

    first = message.partition("\n")[0]  # a \r or \f in a run's name is escaped, not a line's end
    print(f"acm: error: {visible(first)}", file=sys.stderr)
    return 2
