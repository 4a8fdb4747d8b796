"""An `escalate` history entry is a note for a person: it moves no alias and is never read as a production holding."""

import pytest

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.deployment import NeverInProduction, last_in_production, production_releases, rollback
from rlhf_assets.storage import Storage

R1, R2 = "r20250601-2359", "r20250602-2359"


def test_escalate_moves_nothing_and_is_not_a_holding(tmp_path):
    storage = Storage(str(tmp_path))
    registry = Registry(storage)
    registry.set_alias("production", R1, {"policy": "a" * 64}, action="promote", reason="t", actor="t")
    before = registry.aliases()
    entry = registry.escalate("production", R2, reason="live guard: 60% guarded", actor="sensor",
                              evidence={"guarded_share": 0.6})
    assert entry["action"] == "escalate" and entry["evidence"] == {"guarded_share": 0.6} and entry["seq"] == 2
    assert registry.aliases() == before                       # production still R1, same tenure
    assert Registry(storage).aliases() == before              # and so says a fresh replay of the history
    history = registry.history()
    assert production_releases(history) == [R1] and last_in_production(history, R2) is None
    with pytest.raises(NeverInProduction):
        rollback(storage, R2)                                 # an escalation is no production holding
    with pytest.raises(ValueError, match="reason"):
        registry.escalate("production", R1, reason=" ", actor="sensor")
    with pytest.raises(ValueError, match="unknown alias"):
        registry.escalate("staging", R1, reason="x", actor="sensor")
