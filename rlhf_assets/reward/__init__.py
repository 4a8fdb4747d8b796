"""Reward model: Bradley–Terry training (Lightning), scoring, evaluation metrics and calibration. No Dagster."""
