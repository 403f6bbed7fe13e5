"""The signal a step gives when it does not apply to a model (nothing to quantize, no chain to
prune, no attention to fuse): the search skips that candidate with a note, and a single step
tells the user why it cannot run. Not a user error, so not an `InvalidInputError`."""

from __future__ import annotations


class NotApplicable(Exception):
    """This step does not apply to this model; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
