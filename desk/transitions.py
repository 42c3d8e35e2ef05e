"""Status changes as one explicit table per model.

A model lists its transitions as `TRANSITIONS = {"verb": ({from, ...}, to)}` and inherits
from `HasTransitions`, which gives it `can_<verb>()` predicates and `move(verb)`; its
queryset's `move(verb, **fields)` changes many rows the same way. Every status write of a
Run or a StepRun goes through one of the two (tests/desk/test_transitions.py checks the
source for any other).
"""

from __future__ import annotations

from typing import Any

from django.db import models

from tenants import locking


class InvalidTransition(Exception):
    """The row's status does not allow this change."""


class HasTransitions:
    TRANSITIONS: dict[str, tuple[set[str], str]] = {}
    LOCK_LEVEL: locking.Level

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for verb in cls.TRANSITIONS:
            if not hasattr(cls, f"can_{verb}"):
                setattr(cls, f"can_{verb}", _predicate(verb))

    def can(self, verb: str) -> bool:
        sources, _ = self.TRANSITIONS[verb]
        return self.status in sources

    def move(self, verb: str) -> str:
        """Set the status `verb` leads to (unsaved); return it.

        Raises InvalidTransition when the current status does not allow `verb`.
        """
        sources, target = self.TRANSITIONS[verb]
        if self.status not in sources:
            raise InvalidTransition(
                f"{type(self).__name__} {self.pk}: cannot {verb} from {self.status}"
            )
        self.status = target
        return target


def _predicate(verb: str):
    def can_verb(self) -> bool:
        return self.can(verb)

    can_verb.__name__ = f"can_{verb}"
    can_verb.__doc__ = f"Whether the status allows '{verb}'."
    return can_verb


class TransitionQuerySet(models.QuerySet):
    def move(self, verb: str, **fields: Any) -> int:
        """Apply `verb` to every row of this queryset whose status allows it; return how many.

        An UPDATE locks the rows it changes, so it is ordered like any other lock.
        """
        sources, target = self.model.TRANSITIONS[verb]
        locking.note(self.model.LOCK_LEVEL)
        return self.filter(status__in=sources).update(status=target, **fields)
