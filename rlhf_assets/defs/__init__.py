"""Dagster wiring only: assets, checks, partitions, resources, IO managers. Loaded by definitions.py."""

import warnings

import dagster as dg

# Every asset check is declared with its asset's partitions (AssetCheckSpec(partitions_def=...)), so each evaluation
# is stored against its partition and the release gate can read exactly its own. Dagster 1.13 marks that API as a
# preview and warns once per spec at every load; the project depends on it deliberately (tests pin the behaviour:
# rlhf_assets_tests/defs/test_checks_lookup.py), so the warning is silenced here rather than shown to every user.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                        category=dg.PreviewWarning)
