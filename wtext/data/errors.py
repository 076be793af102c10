"""DatasetError: a data file that is missing or not what its format promises, named with the problem."""

from pathlib import Path


class DatasetError(ValueError):
    def __init__(self, path: str | Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem
