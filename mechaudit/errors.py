"""The one error type that the command line turns into exit code 2."""


class InputError(Exception):
    """Bad usage or bad input: reported as one clear line naming the input and the problem."""

    def __init__(self, subject: str, problem: str) -> None:
        super().__init__(f"{subject}: {problem}")
        self.subject = subject
        self.problem = problem
