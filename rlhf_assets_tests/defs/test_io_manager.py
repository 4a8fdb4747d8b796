"""The IO manager stores tables as Parquet (checked against their manifest) and typed references as JSON, says which
it stored, gives downstream assets the same types back, and refuses anything else (an untyped dict included)."""

import dagster as dg
import polars as pl

from rlhf_assets.defs.io_manager import StorageIOManager
from rlhf_assets.references import DatasetTable, ModelRef, read_reference
from rlhf_assets.storage import Storage

REF = ModelRef(artifact_id="a" * 64, kind="reward_model", dataset_id="d" * 64, uri="/x", parents=("p" * 64,),
               metrics={"val_accuracy": 0.75, "nan": float("nan")})


@dg.asset
def a_table() -> pl.DataFrame:
    return pl.DataFrame({"x": [1, 2, 3]})


@dg.asset
def a_dataset() -> DatasetTable:
    return DatasetTable(dataset_id="d" * 64, table=pl.DataFrame({"prompt": ["p"], "split": ["train"]}))


@dg.asset
def a_reference() -> ModelRef:
    return REF


@dg.asset
def downstream(a_table: pl.DataFrame, a_dataset: DatasetTable, a_reference: ModelRef) -> pl.DataFrame:
    assert isinstance(a_dataset, DatasetTable) and a_dataset.dataset_id == "d" * 64
    assert a_reference == ModelRef(**{**REF.__dict__, "metrics": {"val_accuracy": 0.75, "nan": None}})
    return a_table.with_columns(pl.lit(a_reference.artifact_id).alias("model"))


@dg.asset
def untyped() -> dict:
    return {"artifact_id": "a" * 64}


def _materialize(assets, root):
    return dg.materialize(assets, resources={"io_manager": StorageIOManager(root=str(root))}, raise_on_error=False)


def test_tables_and_references_round_trip_and_say_what_was_stored(tmp_path):
    result = _materialize([a_table, a_dataset, a_reference, downstream], tmp_path)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    stored = {e.asset_key.to_user_string(): e.materialization.metadata["stored_as"].value
              for e in result.get_asset_materialization_events()}
    assert stored == {"a_table": "parquet table", "a_dataset": "parquet table (DatasetTable)",
                      "a_reference": "json ModelRef", "downstream": "parquet table"}
    storage = Storage(str(tmp_path))
    assert read_reference(storage, "a_reference", None).artifact_id == REF.artifact_id
    assert storage.read_table_manifest("a_dataset", None)["dataset_id"] == "d" * 64


def test_an_untyped_dict_is_refused(tmp_path):
    result = _materialize([untyped], tmp_path)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "typed reference" in failure.step_failure_data.error.to_string()


def test_a_table_that_does_not_match_its_manifest_is_not_read(tmp_path):
    assert _materialize([a_table], tmp_path).success
    storage = Storage(str(tmp_path))
    storage.write_parquet(storage.table_path("a_table"), pl.DataFrame({"x": [9]}))  # bytes changed behind its back
    result = dg.materialize([a_table.to_source_asset(), downstream, a_dataset, a_reference],
                            resources={"io_manager": StorageIOManager(root=str(tmp_path))},
                            selection=[downstream, a_dataset, a_reference], raise_on_error=False)
    assert not result.success
    messages = " ".join(e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure)
    assert "does not match its manifest" in messages
