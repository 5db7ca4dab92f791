"""What a command shows a person, used by the CLI and the benchmarks alike: plain-text tables,
and progress for long commands (train, clipping, conform, bench), drawn by ``rich``: what is
being done, how far, the time spent, the time left, and a short status such as the perplexity.

The bar lives on stderr and only on a terminal: piped or captured output gets the plain lines
alone, so logs and ``--json`` stay clean. Lines that must stay (``say``) go to the stream they
are meant for; on a terminal they are printed above the bar instead of through it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TextIO

DISABLE_ENV = "ROSETTA_RNN_NO_PROGRESS"
"""Set to 1 to keep the bar off on a terminal too (screen readers, recordings)."""


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def _clock(seconds: float | None) -> str:
    """0:07, 12:34 or 1:02:03; ? while there is no estimate."""
    if seconds is None:
        return "?"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _status_column(unit: str) -> Any:
    """One text after the bar: ``21/500 epochs  0:07 elapsed  2:41 left  <info>``. A narrow
    terminal cuts it from the end, so the count and the times stay readable."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = "?" if task.total is None else f"{task.total:g}"
            left = _clock(task.time_remaining) if task.total is not None else "?"
            info = task.fields.get("info", "")
            text = f"{task.completed:g}/{total} {unit}  {_clock(task.elapsed)} elapsed  {left} left"
            return Text(f"{text}  {info}" if info else text, no_wrap=True, overflow="ellipsis")

    return StatusColumn()


class Progress:
    """``with Progress("training", total=500, unit="epochs") as p: p.advance(info=...)``;
    ``completed`` is where a resumed count starts (it does not count toward the speed).
    ``auto_refresh=False`` draws only when something changes: no redraw thread runs beside
    code being timed (the bench)."""

    def __init__(
        self,
        description: str,
        total: int | None,
        unit: str = "",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        completed: float = 0,
        auto_refresh: bool = True,
    ) -> None:
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = _is_terminal(self.stream) and os.environ.get(DISABLE_ENV, "") in ("", "0")
        self.enabled = enabled
        self.unit = unit
        self.auto_refresh = auto_refresh
        self._bar: Any = None
        self._task: Any = None
        self._description, self._total, self._completed = description, total, completed

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=12),
                _status_column(self.unit),
                console=console,
                auto_refresh=self.auto_refresh,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self._description, total=self._total, completed=self._completed, info=""
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def advance(self, n: float = 1, info: str | None = None) -> None:
        """``n`` more units done; ``info`` replaces the status text after the times."""
        if self._bar is not None:
            fields = {} if info is None else {"info": info}
            self._bar.update(self._task, advance=n, refresh=not self.auto_refresh, **fields)

    def describe(self, description: str, total: int | None = None, reset: bool = False) -> None:
        """Say what is being done (or waited for) now; ``reset`` starts the count again."""
        if self._bar is not None:
            if reset:
                self._bar.reset(self._task, total=total, description=description, info="")
                if not self.auto_refresh:
                    self._bar.refresh()
            else:
                self._bar.update(self._task, description=description, refresh=not self.auto_refresh)

    def say(self, text: str, out: TextIO | None = None) -> None:
        """A line that stays: printed to ``out`` (default stdout), above the bar on a terminal."""
        out = sys.stdout if out is None else out
        if self._bar is not None and _is_terminal(out):
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=out, flush=True)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
