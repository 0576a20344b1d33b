"""ProcessRef is a plain class (exec's liveness check skips dataclasses); it keeps a frozen record's behaviour."""

from __future__ import annotations

import copy
import os
import pickle

import pytest

from microagent.host.process import ProcessRef, is_alive, ref_for


def test_a_process_ref_is_an_immutable_value() -> None:
    ref = ProcessRef(12, 34)
    assert ref == ProcessRef(12, 34) and ref != ProcessRef(12, 35) and ref != (12, 34)
    assert len({ref, ProcessRef(12, 34)}) == 1
    assert repr(ref) == "ProcessRef(pid=12, starttime=34)" and ref.to_json() == {"pid": 12, "starttime": 34}
    with pytest.raises(AttributeError):
        ref.pid = 1  # type: ignore[misc]
    for twin in (pickle.loads(pickle.dumps(ref)), copy.copy(ref), copy.deepcopy(ref)):
        assert twin == ref


def test_liveness_tells_a_recycled_pid_apart() -> None:
    me = ref_for(os.getpid())
    assert is_alive(me)
    assert not is_alive(ProcessRef(me.pid, me.starttime + 1))
