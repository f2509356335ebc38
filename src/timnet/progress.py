"""Progress bars on stderr: redrawn in place on a terminal, plain lines in a log file.

One bar for a whole training (FoldProgress: every fold's epochs, and what each running fold is at),
one per extraction or download (progress_bar). A bar is only ever drawn on stderr, so stdout
stays the results a pipe reads.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .run import Run

LOG_INTERVAL = 60.0  # seconds between a progress bar's lines in a log file


class _LogLines:
    """A progress bar's stream for a log file: each redraw a line of its own, the carriage returns
    and blank clears a terminal needs dropped (otherwise an hour's bar is one line of redraws)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if line := text.replace("\r", "").strip():
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr, none when not `enabled`: redrawn in place on a terminal (or a notebook's
    widget); where stderr is a file, a plain line every LOG_INTERVAL seconds and at the end."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty() and "ipykernel" not in sys.modules:
        share = "{percentage:3.0f}% " if kwargs.get("total") else ""  # a download of unknown size has none
        kwargs.update(file=_LogLines(sys.stderr), mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, dynamic_ncols=False,
                      bar_format="{desc}: " + share + "{n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}]{postfix}")
    return tqdm(disable=not enabled, **kwargs)


class FoldProgress:
    """One progress bar over all epochs of the folds being trained, showing each running fold."""

    def __init__(self, runs: list[Run], tasks: list[tuple[int, int]], *, enabled: bool):
        self.members = {task: runs[task[0]].config.members for task in tasks}
        self.epochs = {task: runs[task[0]].config.epochs * self.members[task] for task in tasks}
        self.named = len(runs) > 1
        self.bar = progress_bar(total=sum(self.epochs.values()), unit="ep", enabled=enabled,
                                desc=f"{len(tasks)} folds", dynamic_ncols=True)
        self.status: dict = {}
        self.seen: dict = {}
        self.done: set = set()

    def _label(self, task, m: int) -> str:
        fold = f"r{task[0] + 1}f{task[1]}" if self.named else f"f{task[1]}"
        return fold if self.members[task] == 1 else f"{fold}m{m + 1}"

    def epoch(self, task, row: dict) -> None:
        """Record that `task` finished the epoch described by `row` (member m's epoch e counted as
        m * epochs + e: members of one fold may train at once, in other workers)."""
        if task in self.done:
            return  # Ray delivers epoch news without waiting: some arrive after the fold's result
        per = self.epochs[task] // self.members[task]
        m = (row["epoch"] - 1) // per
        shown = f"ep {row['epoch'] - m * per} loss {row['loss']:.3f}"
        if "val_uar" in row:
            shown += f" val_uar {row['val_uar']:.3f}"
        self.status[task, m] = shown
        # a fold retried from its snapshot repeats epochs: the bar never goes back
        self.bar.update(max(row["epoch"] - self.seen.get((task, m), m * per), 0))
        self.seen[task, m] = max(row["epoch"], self.seen.get((task, m), m * per))
        self.bar.set_postfix_str(" | ".join(f"{self._label(*t)}: {v}" for t, v in sorted(self.status.items())),
                                 refresh=False)

    def finished(self, task) -> None:
        per = self.epochs[task] // self.members[task]
        shown = sum(self.seen.pop((task, m), m * per) - m * per for m in range(self.members[task]))
        self.bar.update(self.epochs[task] - shown)  # early stopping skips epochs
        self.done.add(task)
        for m in range(self.members[task]):
            self.status.pop((task, m), None)

    def write(self, message: str, log: Callable[[str], None]) -> None:
        """`message` through the caller's `log`, the bar cleared meanwhile and drawn again below it."""
        with self.bar.external_write_mode(file=sys.stderr):
            log(message)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
