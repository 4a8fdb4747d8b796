"""The reward-model pillar: preference_dataset → reward_model → rm_calibration, per release."""
