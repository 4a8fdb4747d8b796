"""Preference data: record schema, ingest, validation, aggregation across annotators, agreement.

Nothing in this package imports Dagster.
"""
