import dagster as dg

from rlhf_assets.defs.config_classes import config_class, settings_from
from rlhf_assets.defs.owners import OWNERS
from rlhf_assets.defs.partitions import release_partitions
from rlhf_assets.defs.resources import StorageResource
from rlhf_assets.defs.reward.reward_model import train_rm
from rlhf_assets.defs.training import TRAINING_RETRY_POLICY, TrainingLauncherResource
from rlhf_assets.preference.snapshot import pairs_jsonl
from rlhf_assets.references import DatasetTable, ModelRef
from rlhf_assets.reward.config import RMConfig

#: The judge's own default seed: another initialisation and data order than the proxy's, on other pairs.
JUDGE_SEED = RMConfig.seed + 1

JudgeRewardModelConfig = config_class(
    "JudgeRewardModelConfig", RMConfig, defaults={"seed": JUDGE_SEED},
    doc="The reward model's settings (same preset and defaults), with the judge's own seed.")


@dg.asset(partitions_def=release_partitions, group_name="release", kinds={"pytorch", "lightning"}, owners=OWNERS,
          retry_policy=TRAINING_RETRY_POLICY)
def judge_reward_model(
    context: dg.AssetExecutionContext,
    config: JudgeRewardModelConfig,
    storage: StorageResource,
    training_launcher: TrainingLauncherResource,
    preference_dataset: DatasetTable,
) -> dg.Output[ModelRef]:
    """Independent judge: a Bradley–Terry reward model trained like reward_model (`rlhf rm train` through Dagster
    Pipes) but on the release's `judge` split only — prompts disjoint from the pairs the proxy reward model and PPO
    saw — early-stopped on the validation split. ope_report scores the PPO policy with it, so the uplift that gates
    the release comes from a signal the policy was never optimised against (Gao et al.'s gold/proxy set-up)."""
    n_judge = pairs_jsonl(preference_dataset.table, "judge").count(b"\n")  # one pair per line
    if n_judge < 2:
        raise dg.Failure(f"release {context.partition_key}: the preference dataset has {n_judge} judge-split pair(s); "
                         "a snapshot built before the judge split existed (or judge_fraction=0) has none — create "
                         "a new release with preference_dataset's judge_fraction > 0", allow_retries=False)
    return train_rm(context, settings_from(config, RMConfig), storage, training_launcher, preference_dataset,
                    "judge", "judge_reward_model", judge_pairs=n_judge)
