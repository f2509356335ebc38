"""The one exception type that user-facing code raises for bad input."""


class TimnetError(Exception):
    """Bad input: a missing path, an unknown name, an unreadable file, a weight file that does not fit.

    The message is one line that names the offending file or value and what was expected;
    the CLI prints it as ``timnet: error: <message>`` and exits non-zero.
    """


class ConfigurationChanged(TimnetError):
    """A run folder holds a run of another configuration: `changed` names the keys that differ and
    `hint` how to resume it, so a caller that made the folder (a sweep's trial) can say it in its words."""

    def __init__(self, message: str, changed: tuple[str, ...] = (), hint: str = ""):
        super().__init__(message)
        self.changed, self.hint = tuple(changed), hint

    def __reduce__(self):  # raised in a worker process, it must cross back whole
        return type(self), (str(self), self.changed, self.hint)


class Diverged(TimnetError):
    """A training's loss became NaN or infinite (a learning rate too high for the data): every later
    epoch would be NaN too. A sweep records such a trial's fold as diverged and chooses among the others."""
