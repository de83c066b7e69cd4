"""The one error type users see as a message instead of a traceback. A leaf module."""


class UserError(Exception):
    """A problem the user can fix; str(exc) says what is wrong and what to do. The CLI prints it, exit code 2."""

    exit_code = 2
