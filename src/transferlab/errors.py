"""The exception types the entry points turn into one line and an exit status."""

import math
import signal


class ConfigError(ValueError):
    """A user mistake: the message is one line that names the option and the fix.

    Entry points print it as ``error: <message>`` and exit with status 2, without a traceback.
    """


def is_number(value: object, whole: bool = False) -> bool:
    """A finite number (a whole one with ``whole``): not a bool, a string or NaN."""
    if isinstance(value, bool) or not isinstance(value, (int,) if whole else (int, float)):
        return False
    # Every int is finite; math.isfinite would overflow on one too large for a float (e.g. 1 and 400 zeros).
    return isinstance(value, int) or math.isfinite(value)


def check_bool(option: str, value: object, allow_none: bool = False) -> None:
    """``option`` must be true or false (or null with ``allow_none``): a string such as "maybe" would read as true."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        raise ConfigError(f"{option}={value}: use true or false{' or null' if allow_none else ''}")


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGTERM, SIGINT): recorded as ``interrupted``, exit status 128 + signal.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunFailed(RuntimeError):
    """The run went wrong by itself (a diverged loss, features that are not finite): recorded as ``failed`` with
    this one-line message, printed as ``error: <message>``, exit status 1."""
