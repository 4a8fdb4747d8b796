"""Dagster wiring only: assets, checks, partitions, resources, IO managers. Loaded by definitions.py."""
