"""Content-addressed artifact store, aliases and history. No Dagster."""
