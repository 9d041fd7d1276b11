"""Per-model state of an estimator (SPAD's ranking, PES's particles) is of this process's models.

Invariants:
- A copy keeps the state (copy.copy shares it, copy.deepcopy copies it, as any attribute); a pickle
  (an estimator sent to another process, as a sweep's run is) leaves it out, and the estimator
  unpickled starts afresh, as a new one does: the models it was about are not there.
"""

from __future__ import annotations

import copy
import weakref


class ProcessLocalState:
    """A base of estimators whose per-model state is the WeakKeyDictionary attribute `_local` names."""
    _local = ""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != self._local}

    def __setstate__(self, values):
        self.__dict__.update(values)
        self.__dict__[self._local] = weakref.WeakKeyDictionary()

    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo):
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone
