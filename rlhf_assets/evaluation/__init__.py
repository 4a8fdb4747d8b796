"""Off-policy evaluation (:mod:`.ope`) and deployment gates (:mod:`.gates`). No Dagster here."""
