"""The one base class of the user's mistakes: an entry script prints the message and stops, without a traceback."""


class UserError(Exception):
    """An error the user fixes (a config value, a missing or foreign file, a full disk); its message says how."""
