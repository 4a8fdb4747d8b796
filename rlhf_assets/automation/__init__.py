"""What the sensors decide, without Dagster: which landed files need a run, whether served traffic drifted, whether
the reward model still agrees with the humans auditing it, whether an annotator's reliability collapsed, and what
each alarm does (retrain, roll back, graduate or end a canary). The sensors in ``defs/sensors/`` only read the
instance, call these and turn the answers into run requests and asset events."""
