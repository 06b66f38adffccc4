"""Output: atomic writes, checks made before anything is printed, stdout that fails in one line.

- A report is either the old file or the whole new one, never half of it (``atomic_write_*``).
- ``check_writable_file`` / ``check_writable_dir`` let a command refuse an output it cannot write BEFORE it
  prints anything (``--out``, ``--plot``, ``--emit-dir``); a failed write is an :class:`OutputError` (one line,
  exit 2), never an internal error.
- ``write_stdout`` writes a rendered document in one go: a full device is an :class:`OutputError`, a closed pipe
  (``quantlab profiles | head -1``) ends quietly, as other Unix tools do.
- ``render_text`` renders rich tables to plain text at the width of the terminal, of ``$COLUMNS`` when it is set,
  and 80 columns in a file or pipe (no colour, no escape codes, so a log reads as the terminal did).
- ``pathlib`` and ``tempfile`` are imported inside the functions that write files: most CLI runs write only to
  stdout, and the two imports (with ``random``, ``shutil`` and ``urllib.parse``) cost every start otherwise.
"""

from __future__ import annotations

import os
import sys

from quantlab.errors import QuantlabError

LOG_WIDTH = 80  # columns when the output is not a terminal and $COLUMNS is unset


class OutputError(QuantlabError):
    """An output that cannot be written (a folder that is a file, no permission, a full device)."""


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _first_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike, flag: str = "folder", *, shown: str | os.PathLike | None = None) -> Path:
    """Raise :class:`OutputError` unless ``path`` is, or can be made as, a writable folder: its first existing
    ancestor must be a folder that takes a new file (probed with a temporary file that is removed at once)."""
    from pathlib import Path

    path = Path(path)
    what = f"cannot write {flag} {shown if shown is not None else path}"
    base = _first_existing(path.absolute())
    if not base.is_dir():
        raise OutputError(f"{what}: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: {base} is not writable")
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise OutputError(f"{what}: {base} does not take new files ({_reason(e)})") from None
    return path


def check_writable_file(path: str | os.PathLike, flag: str = "file") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be (re)written atomically (its folder made if needed)."""
    from pathlib import Path

    path = Path(path)
    if not path.name or path.is_dir():
        raise OutputError(f"cannot write {flag} {path}: it is a folder")
    if path.exists() and not path.is_file():
        raise OutputError(f"cannot write {flag} {path}: it is not a regular file")
    check_writable_dir(path.parent, flag, shown=path)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    import tempfile
    from pathlib import Path

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {_reason(e)}") from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_append_line(path: str | os.PathLike, line: str) -> Path:
    """Append one line by rewriting the file atomically (files here are small)."""
    from pathlib import Path

    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    return atomic_write_bytes(path, old + line.rstrip("\n").encode("utf-8") + b"\n")


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def write_stdout(text: str) -> None:
    """Write ``text`` to stdout and flush: a closed pipe ends quietly, any other failure is an OutputError."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    except OSError as e:
        _quiet_stdout()
        raise OutputError(f"cannot write to stdout: {_reason(e)}") from None


def output_width(stream=None) -> int:
    """Columns for rendered tables: $COLUMNS, else the terminal's width, else 80 (a log file or a pipe)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        pass
    return LOG_WIDTH


def render_text(*renderables, width: int | None = None) -> str:
    """Rich renderables (tables, marked-up strings) as text for stdout: colour only on a terminal."""
    import io

    from rich.console import Console

    tty = False
    try:
        tty = sys.stdout.isatty()
    except (ValueError, AttributeError):
        pass
    buf = io.StringIO()
    con = Console(file=buf, width=width or output_width(), force_terminal=tty, no_color=not tty,
                  color_system="auto" if tty else None, highlight=False, soft_wrap=False)
    for r in renderables:
        con.print(r)
    return "\n".join(line.rstrip() for line in buf.getvalue().split("\n"))  # no padding to the width in a log
