"""The data pillar through real Dagster runs on a temporary instance and storage root."""

import gzip
import io
import json

import dagster as dg
import polars as pl
import pytest

from rlhf_assets.definitions import defs
from rlhf_assets.preference.sample_data import load_hh_pairs
from rlhf_assets.preference.simulator import landing_files, simulate_comparisons
from rlhf_assets.storage import Storage
from rlhf_assets_tests.defs.dagster_support import DAY, lay, run_day


def checks(result):
    return {e.check_name: e.passed
            for e in result.get_asset_check_evaluations()}


def check_metadata(result, name):
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return {k: v.value for k, v in evaluation.metadata.items()}


DOWNSTREAM = {"aggregated_labels", "annotator_reliability", "annotator_agreement"}


def materialized(result):
    return {e.event_specific_data.materialization.asset_key.to_user_string() for e in
            result.get_asset_materialization_events()}


def test_definitions_load_and_validate(storage_root):
    d = defs()
    dg.Definitions.validate_loadable(d)
    keys = {k.to_user_string() for k in d.resolve_all_asset_keys()}
    assert {"raw_comparisons", "validated_pairs", "aggregated_labels", "annotator_reliability",
            "annotator_agreement"} <= keys
    assert d.resolve_job_def("data_pillar").partitions_def is not None


@pytest.mark.slow
def test_clean_partition_materializes_with_manifests(storage_root, dagster_instance):
    storage, batch = lay(storage_root)
    result = run_day(dagster_instance)
    assert result.success
    assert checks(result) == {"all_files_readable": True, "quarantine_rate": True, "rows_conserved": True,
                              "aggregation_converged": True, "annotators_stable": True}  # no history yet: stable
    assert materialized(result) == {"raw_comparisons", "validated_pairs", "aggregated_labels",
                                    "annotator_reliability", "annotator_agreement"}
    labels = storage.read_parquet(storage.table_path("aggregated_labels", DAY))
    assert labels.height == 60 and labels["pair_id"].n_unique() == 60
    manifest = json.loads(storage.manifest_path("aggregated_labels", DAY).read_text())
    assert manifest["rows"] == 60 and len(manifest["sha256"]) == 64 and manifest["code_version"]
    # aggregation recovers the simulator's truth on most pairs
    truth = batch.truth
    acc = sum(truth[p] == lab for p, lab in zip(labels["pair_id"], labels["label"])) / labels.height
    assert acc >= 0.9
    # the run is recorded on the instance: the partition shows as materialized
    status = dagster_instance.get_latest_materialization_event(dg.AssetKey("validated_pairs"))
    assert status is not None and status.dagster_event.partition == DAY


@pytest.mark.slow
def test_rematerializing_gives_identical_content(storage_root, dagster_instance):
    storage, _ = lay(storage_root)
    assert run_day(dagster_instance).success
    first = json.loads(storage.manifest_path("aggregated_labels", DAY).read_text())["sha256"]
    assert run_day(dagster_instance).success
    assert json.loads(storage.manifest_path("aggregated_labels", DAY).read_text())["sha256"] == first


@pytest.mark.slow
def test_bad_batch_fails_blocking_check_and_stops_downstream(storage_root, dagster_instance):
    storage, batch = lay(storage_root, bad_row_rate=0.2)
    result = run_day(dagster_instance)
    assert not result.success
    assert checks(result)["quarantine_rate"] is False
    assert checks(result)["rows_conserved"] is True
    assert materialized(result) == {"raw_comparisons", "validated_pairs"}  # nothing downstream of the gate
    assert not DOWNSTREAM & materialized(result)
    quarantined = storage.read_parquet(storage.quarantine_dir(DAY).joinpath("rows.parquet"))
    raw = storage.read_parquet(storage.table_path("raw_comparisons", DAY))
    assert quarantined.height >= batch.n_bad and raw.height == len(batch.records)


def _drop_last(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.head(frame.height - 1)


def _duplicate_first(frame: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([frame, frame.head(1)])


@pytest.mark.slow
@pytest.mark.parametrize("where", ["ingest", "validation"])
@pytest.mark.parametrize("bug, difference", [(_drop_last, 1), (_duplicate_first, -1)], ids=["drop", "duplicate"])
def test_rows_lost_or_duplicated_after_landing_fail_rows_conserved_and_block(
        storage_root, dagster_instance, monkeypatch, where, bug, difference):
    """A bug between the landing zone and the validated table (here: in ingest, or in validate's split) that
    drops or duplicates one row makes rows_conserved fail, and nothing downstream materializes."""
    import rlhf_assets.defs.data.raw_comparisons as raw_module
    import rlhf_assets.defs.data.validated_pairs as validated_module

    if where == "ingest":
        real = raw_module.ingest_landing

        def buggy(storage, day):
            batch = real(storage, day)
            batch.records = bug(batch.records)
            return batch

        monkeypatch.setattr(raw_module, "ingest_landing", buggy)
    else:
        real = validated_module.validate

        def buggy(records, rules):
            result = real(records, rules)
            result.valid = bug(result.valid)
            return result

        monkeypatch.setattr(validated_module, "validate", buggy)
    lay(storage_root)  # 60 pairs x 5 labels, all clean
    result = run_day(dagster_instance)
    assert not result.success
    assert checks(result)["rows_conserved"] is False
    assert checks(result)["quarantine_rate"] is True  # the gate that stops it is rows_conserved
    assert not DOWNSTREAM & materialized(result)
    meta = check_metadata(result, "rows_conserved")
    assert meta["rows_landing"] == 300 and meta["rows_in_quarantined_files"] == 0
    assert meta["difference"] == difference
    assert meta["rows_landing"] - meta["rows_valid"] - meta["rows_quarantined"] == difference
    (bad_file,) = meta["mismatched_files"].values()
    assert bad_file["landing"] - bad_file["valid_or_quarantined"] == difference


@pytest.mark.slow
def test_threshold_is_config(storage_root, dagster_instance):
    lay(storage_root, bad_row_rate=0.2)
    config = dg.RunConfig(ops={"validated_pairs": {"config": {"max_quarantine_rate": 0.5}}})
    result = defs().resolve_job_def("data_pillar").execute_in_process(
        partition_key=DAY, instance=dagster_instance, run_config=config)
    assert result.success and checks(result)["quarantine_rate"] is True


@pytest.mark.slow
def test_unreadable_file_is_quarantined_and_reported(storage_root, dagster_instance):
    storage, batch = lay(storage_root)
    storage.write_bytes(storage.landing_dir(DAY).joinpath("broken.jsonl"), b"\x00\x01binary")
    result = run_day(dagster_instance)
    assert result.success  # a warning, not a failure: the other files are fine
    assert checks(result)["all_files_readable"] is False
    assert not storage.landing_dir(DAY).joinpath("broken.jsonl").exists()
    moved = storage.quarantine_dir(DAY).joinpath("files", "broken.jsonl")
    assert moved.exists()
    reason = json.loads(moved.with_name("broken.jsonl.reason.json").read_text())
    assert "binary" in reason["error"]


@pytest.mark.slow
def test_empty_partition_succeeds(storage_root, dagster_instance):
    result = run_day(dagster_instance, day="2025-06-05")
    assert result.success
    assert all(checks(result).values())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["majority"])
def test_majority_vote_config(storage_root, dagster_instance, method):
    storage, _ = lay(storage_root)
    config = dg.RunConfig(ops={"aggregated_labels": {"config": {"method": method}}})
    result = defs().resolve_job_def("data_pillar").execute_in_process(
        partition_key=DAY, instance=dagster_instance, run_config=config)
    assert result.success
    labels = storage.read_parquet(storage.table_path("aggregated_labels", DAY))
    assert set(labels["label"]) <= {"a", "b", "tie"}
    assert labels.filter(pl.col("n_votes") != 5).height == 0


@pytest.mark.slow
def test_conservation_on_a_batch_mixing_many_kinds_of_bad_input(storage_root, dagster_instance):
    """Every line of every file is accounted for: rows counted in landing = valid + quarantined + in quarantined
    files, and unreadable files are moved aside with a reason; 31 kinds of bad row plus clean rows, a Parquet
    file, and three unreadable files (one of them a truncated gzip that cannot be counted)."""
    from rlhf_assets_tests.records import BAD, line, rec
    from rlhf_assets_tests.records import DAY as BAD_DAY

    storage = Storage(storage_root)
    clean = [line(rec(i)) for i in range(1000, 2000)]  # ids disjoint from the bad rows (c100…c132)
    bad = [text for text, _ in BAD.values()] + [line(rec(900, comparison_id="c1005"))]  # + a duplicate id
    storage.write_bytes(storage.landing_dir(BAD_DAY).joinpath("mixed.jsonl"), b"\n".join(clean + bad) + b"\n")
    storage.write_bytes(storage.landing_dir(BAD_DAY).joinpath("array.jsonl"), b'[{"comparison_id": "x"}]')
    storage.write_bytes(storage.landing_dir(BAD_DAY).joinpath("empty.jsonl.gz"), b"")
    storage.write_bytes(storage.landing_dir(BAD_DAY).joinpath("cut.jsonl.gz"), gzip.compress(b"\n".join(clean))[:999])
    parquet = io.BytesIO()
    pl.DataFrame([rec(i) for i in range(3000, 3040)]).write_parquet(parquet)
    storage.write_bytes(storage.landing_dir(BAD_DAY).joinpath("more.parquet"), parquet.getvalue())
    bounds = {"max_prompt_chars": 200, "max_response_chars": 100}  # the bounds the BAD rows were written for
    result = defs().resolve_job_def("data_pillar").execute_in_process(
        partition_key=BAD_DAY, instance=dagster_instance, raise_on_error=False,
        run_config=dg.RunConfig(ops={"validated_pairs": {"config": bounds}}))
    assert result.success, "under the 5% threshold, the batch passes"
    assert checks(result)["rows_conserved"] is True
    assert checks(result)["all_files_readable"] is False
    conserved = check_metadata(result, "rows_conserved")
    # the array file is one line; the empty gzip none; the truncated gzip cannot be counted: it is one whole file
    assert conserved["rows_landing"] == len(clean) + len(bad) + 40 + 1
    assert conserved["rows_in_quarantined_files"] == 1 and conserved["difference"] == 0
    assert conserved["rows_valid"] + conserved["rows_quarantined"] == len(clean) + len(bad) + 40
    assert list(conserved["files_uncountable"]) == ["cut.jsonl.gz"] and conserved["files_quarantined"] == 3
    assert conserved["mismatched_files"] == {}
    meta = {e.event_specific_data.materialization.asset_key.to_user_string():
            {k: v.value for k, v in e.event_specific_data.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}
    validated = meta["validated_pairs"]
    assert validated["rows_in"] == len(clean) + len(bad) + 40
    assert validated["rows_valid"] + validated["rows_quarantined"] == validated["rows_in"]
    assert validated["rows_quarantined"] == len(bad) + 1  # the duplicated id fails on both copies
    assert meta["raw_comparisons"]["files_unreadable"] == 3
    quarantine = storage.quarantine_dir(BAD_DAY)
    assert storage.read_parquet(quarantine.joinpath("rows.parquet")).height == validated["rows_quarantined"]
    assert sorted(p.name for p in storage.list_files(quarantine.joinpath("files"))) == [
        "array.jsonl", "array.jsonl.reason.json", "cut.jsonl.gz", "cut.jsonl.gz.reason.json", "empty.jsonl.gz",
        "empty.jsonl.gz.reason.json"]
    reason = storage.read_json(quarantine.joinpath("files", "cut.jsonl.gz.reason.json"))
    assert reason["landing_rows"] is None and "gunzip" in reason["landing_rows_error"]


@pytest.mark.slow
def test_data_pillar_on_an_s3_storage_root(s3_storage, monkeypatch, dagster_instance):
    """Landing zone, tables, manifests and quarantine on s3:// (moto on loopback), through the same assets."""
    storage, client, bucket = s3_storage
    monkeypatch.setenv("RLHF_STORAGE_ROOT", storage.uri)
    monkeypatch.setenv("RLHF_S3_ENDPOINT_URL", storage.storage_options["endpoint_url"])
    batch = simulate_comparisons(load_hh_pairs(limit=20), dates=[DAY], labels_per_pair=3, seed=2)
    for day, (name, data) in landing_files(batch).items():
        storage.write_bytes(storage.landing_dir(day).joinpath(name), data)
    storage.write_bytes(storage.landing_dir(DAY).joinpath("broken.parquet"), b"not parquet")
    result = run_day(dagster_instance)
    assert result.success
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"prefix/tables/aggregated_labels/{DAY}.parquet" in keys
    assert f"prefix/tables/aggregated_labels/{DAY}.manifest.json" in keys
    assert f"prefix/quarantine/date={DAY}/files/broken.parquet" in keys
    assert f"prefix/landing/comparisons/date={DAY}/broken.parquet" not in keys
    assert storage.read_parquet(storage.table_path("aggregated_labels", DAY)).height == 20
