"""The one exception type for user mistakes."""


class ConfigError(ValueError):
    """A user mistake: the message is one line that names the option and the fix.

    Entry points print it as ``error: <message>`` and exit with status 2, without a traceback.
    """
