"""rlhf_assets: a production RLHF loop as a Dagster graph of software-defined assets."""

__version__ = "0.1.0"
