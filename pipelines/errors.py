"""The two kinds of error the CLI reports in one line (exit codes: 2 for UserError, 1 for RunFailure)."""


class UserError(Exception):
    """Bad arguments or invalid/missing input: fix the input and run again (exit code 2)."""


class RunFailure(Exception):
    """Something failed while running; finished work is kept (exit code 1)."""


class StepStopped(RunFailure):
    """A step stopped early on request (Ctrl-C, SIGTERM) after saving what it needs to resume."""


class ClusterLost(RunFailure):
    """The Ray cluster stopped answering (its head node died, or the network to it): the study cannot go on, and
    its finished steps and checkpoints are kept for a run on another cluster."""


class ManyProblems(UserError):
    """Several problems with one input (a config's every invalid key): a headline, then one indented line per
    problem. The CLI prints all the lines; every other error prints one."""

    def __init__(self, headline: str, problems: list[str]):
        self.headline, self.problems = headline, list(problems)
        super().__init__("\n".join([headline, *(f"  {p}" for p in self.problems)]))
