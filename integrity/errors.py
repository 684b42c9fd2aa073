"""Errors that end a run with exit code 2: the run could not be judged."""


class UserError(Exception):
    """Bad arguments, an invalid manifest or a missing input.

    The message is one line naming the file and what is wrong; the command
    line prints it to stderr and exits with code 2.
    """


class ManifestError(UserError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
