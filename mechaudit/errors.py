"""The one error type that the command line turns into exit code 2."""


class InputError(Exception):
    """Bad usage or bad input: reported as one clear line naming the input and the problem."""

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject = subject
        self.problem = problem


def first_line(message: BaseException | str) -> str:
    """The first line of ``message``, stripped, for one-line reports; an exception with no message is named by its
    type, a blank string gives ``""``."""
    lines = str(message).strip().splitlines()
    if lines:
        return lines[0]
    return type(message).__name__ if isinstance(message, BaseException) else ""
