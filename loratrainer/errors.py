"""The one error type users see as a message instead of a traceback. A leaf module."""


class UserError(Exception):
    """A problem the user can fix; str(exc) says what is wrong and what to do. The CLI prints it, exit code 2."""

    exit_code = 2
    msg = None  # a coded message (loratrainer.messages.Msg) when raised with one: the GUI says it in its language

    def __init__(self, *args):
        if len(args) == 1 and hasattr(args[0], "render") and hasattr(args[0], "code"):  # a Msg: str() is its English
            self.msg = args[0]
            args = (str(args[0]),)
        super().__init__(*args)
