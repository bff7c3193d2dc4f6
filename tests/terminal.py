"""A command run in a pseudo-terminal of a given width, and the screen it leaves: what a user sees
once it ends, after every redraw of a live display (a small terminal emulator: carriage return,
line feed, cursor up, erase line, wrapping at the width; colours ignored)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONTROL = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b[()][A-Za-z0-9]|\x1b.|[\r\n\b]|[^\x1b\r\n\b]+")
ANSI = re.compile(r"\x1b\[[?0-9;]*[A-Za-z]")


def run_acm(args: list[str], cols: int, rows: int = 200, timeout: float = 300) -> tuple[int, str, str]:
    """`acm ARGS` on a terminal COLS wide: (exit code, everything written without colours, screen)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env |= {"TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # the last writer closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    code = proc.wait()
    raw = b"".join(chunks).decode("utf-8", "replace")
    return code, ANSI.sub("", raw), screen(raw, cols)


def screen(raw: str, cols: int) -> str:
    shown = Screen(cols)
    for m in CONTROL.finditer(raw):
        shown.feed(m)
    return "\n".join("".join(line).rstrip() for line in shown.lines)


class Screen:
    def __init__(self, cols: int):
        self.cols, self.lines, self.row, self.col = cols, [[]], 0, 0

    def feed(self, m: re.Match) -> None:
        text, cmd, arg = m.group(0), m.group(2), m.group(1)
        if cmd == "A":  # cursor up
            self.row = max(self.row - int(arg or 1), 0)
        elif cmd == "K":  # erase the line, or its end
            self.lines[self.row] = [] if arg == "2" else self.lines[self.row][:self.col]
        elif cmd == "G":
            self.col = int(arg or 1) - 1
        elif text in "\r\n\b":
            self.row += text == "\n"
            self.col = 0 if text != "\b" else max(self.col - 1, 0)
        elif not text.startswith("\x1b"):
            for ch in text:
                self.put(ch)
        while len(self.lines) <= self.row:
            self.lines.append([])

    def put(self, ch: str) -> None:
        if self.col >= self.cols:  # past the last column: the terminal wraps
            self.row, self.col = self.row + 1, 0
        while len(self.lines) <= self.row:
            self.lines.append([])
        line = self.lines[self.row] + [" "] * max(0, self.col + 1 - len(self.lines[self.row]))
        line[self.col] = ch
        self.lines[self.row], self.col = line, self.col + 1


class AppOnATerminal:
    """acm-tui started in `project` on a pseudo-terminal of its own (its controlling terminal, as over
    SSH), COLS x ROWS; `seen` fills with what it writes, read on a thread as a user's terminal reads."""

    def __init__(self, project: Path, cols: int = 80, rows: int = 24):
        env = os.environ | {"TERM": "xterm-256color", "PYTHONPATH": str(ROOT), "COLUMNS": str(cols), "LINES": str(rows)}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: acm-tui, by its entry point
            os.chdir(project)
            os.execvpe(sys.executable, [sys.executable, "-m", "acm_tui.launch"], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.seen = bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(self.fd, 1 << 16):
                self.seen += data

    def running(self) -> bool:
        return os.waitpid(self.pid, os.WNOHANG)[0] == 0

    def hang_up(self) -> None:
        """The terminal goes (an SSH connection dropped): the kernel hangs up its session."""
        os.close(self.fd)
        self.fd = -1

    def exit_code(self, timeout: float) -> int:
        """Its exit code once it has ended, waited for at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (done := os.waitpid(self.pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the app did not end"
            time.sleep(0.1)
        return os.waitstatus_to_exitcode(done[1])

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        if self.fd >= 0:
            os.close(self.fd)
