"""Progress display for long lab work (rich), silent when disabled or not on a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


@contextlib.contextmanager
def status(message: str, enabled: bool = True) -> Iterator[None]:
    if not enabled:
        yield
        return
    from rich.console import Console

    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        print(message + " ...", file=sys.stderr, flush=True)
        yield


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """A progress bar over ``items`` on stderr (rich); plain iteration when disabled."""
    if not enabled:
        yield from items
        return
    from rich.progress import track as rich_track

    yield from rich_track(items, description=description, total=total, transient=False,
                          console=__import__("rich.console").console.Console(stderr=True))
