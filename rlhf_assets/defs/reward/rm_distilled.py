import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.metadata import display, table
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.references import CalibrationRef, DatasetTable, ModelRef
from rlhf_assets.reward.distill import DistillSettings
from rlhf_assets.reward.distill_release import ARTIFACT_KIND, distill_release, production_policy_texts

RmDistilledConfig = config_class("RmDistilledConfig", DistillSettings)

FIDELITY_COLUMNS = ["model", "accuracy", "auc", "ece", "ece_calibrated", "log_loss", "teacher_pearson",
                    "teacher_spearman"]


@dg.asset(partitions_def=release_partitions, group_name="cost", kinds={"pytorch"}, owners=OWNERS)
def rm_distilled(
    context: dg.AssetExecutionContext,
    config: RmDistilledConfig,
    storage: StorageResource,
    reward_model: ModelRef,
    rm_calibration: CalibrationRef,
    preference_dataset: DatasetTable,
) -> dg.Output[ModelRef]:
    """A smaller student of the release's reward model (fewer layers, narrower; DistillSettings), trained on the
    release's train pairs against the teacher's scores (regression) and the human preferences (Bradley–Terry), and
    on the production policy's answers to the release's train prompts (the teacher's scores only; policy_samples),
    Platt-calibrated on the validation split. Test-split accuracy, ECE and correlation with the teacher for teacher,
    student and an untrained student of the same size; scoring latency and throughput of both measured on this
    machine; the student → teacher cascade's escalated share, accuracy and cost at the configured band. Trained in
    this step's process (a single-device torch loop of seconds to minutes on CPU: no DDP, so no launcher). In group
    ``cost``, outside the release_chain job: a release does not wait for it; materialize it for a release when a
    cheaper reward model is wanted."""
    s = settings_from(config, DistillSettings)
    store = storage.storage()
    texts, sampled = production_policy_texts(store, preference_dataset.table, s.policy_samples, s.seed)
    context.log.info(sampled)
    out = distill_release(store, reward_model.artifact_id, rm_calibration.calibrator,
                          preference_dataset.table, s, dataset_id=preference_dataset.dataset_id,
                          extra_texts=texts, release=context.partition_key)
    r = out.report
    student = r["fidelity"]["student"]
    metadata = {
        "artifact_id": out.artifact_id,
        "teacher_artifact_id": reward_model.artifact_id,
        "fidelity": table([{"model": name, **row} for name, row in r["fidelity"].items()], FIDELITY_COLUMNS),
        "serving_speed": table([{"model": name, **row} for name, row in r["speed"].items()],
                               ["model", "batch_size", "batch_p50_ms", "batch_p99_ms", "items_per_s",
                                "cpu_s_per_1k_items"]),
        "cascade": r["cascade"],
        "n_parameters": r["n_parameters"],
        "training_cpu_s": r["training"]["cpu_s"],
        "n_train_pairs": r["training"]["n_train_pairs"],
        "policy_samples": sampled,
        "n_test_pairs": r["n_test_pairs"],
    }
    return dg.Output(ModelRef(artifact_id=out.artifact_id, kind=ARTIFACT_KIND,
                              dataset_id=preference_dataset.dataset_id, uri=out.uri,
                              parents=(reward_model.artifact_id,),
                              metrics={f"test_{k}": float(v) for k, v in student.items()}),
                     metadata=display(metadata))
