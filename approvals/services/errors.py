"""The one error the approvals services raise."""


class DecisionError(Exception):
    """The decision cannot be taken; nothing was written."""

    def __init__(self, message: str, *, code: str = "invalid_decision", errors=None):
        super().__init__(message)
        self.code = code
        self.errors: list[dict[str, str]] = errors or []
