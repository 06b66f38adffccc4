"""Units. Integer bytes inside; GiB (binary, 2**30) or GB (decimal, 10**9) only at display."""

from __future__ import annotations

GiB = 1 << 30
MiB = 1 << 20
GB = 10**9


def fmt_bytes(n: int | float | None, unit: str = "GiB", digits: int = 2) -> str:
    """The one display helper for byte counts: ``fmt_bytes(3 * GiB) == '3.00 GiB'``."""
    if n is None:
        return "-"
    div = {"GiB": GiB, "MiB": MiB, "GB": GB, "B": 1}[unit]
    if unit == "B":
        return f"{int(n):,} B"
    return f"{n / div:.{digits}f} {unit}"


def fmt_count(n: int | None) -> str:
    """Parameter counts: 6,738,415,616 -> '6.74 B'."""
    if n is None:
        return "-"
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return str(n)


def fmt_seconds(s: float) -> str:
    """A duration for display: ms under a second, then s, min, h, d."""
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    if s < 72 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def console(stderr: bool = False):
    """A rich Console; when output is not a terminal (pipes, files, tests) it is wide, so tables do not wrap.
    A closed pipe raises :class:`BrokenPipeError` to the CLI, which ends quietly."""
    import sys

    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich's own handler exits 1; the CLI ends a closed pipe quietly (exit 0)
            self.quiet = True
            raise BrokenPipeError

    stream = sys.stderr if stderr else sys.stdout
    return _Console(file=stream, width=None if stream.isatty() else 200)
