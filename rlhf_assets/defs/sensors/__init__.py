"""The sensors that make the graph a loop: landing files, served-traffic drift, human–RM correlation (with canary
graduation and rollback), annotator disagreement, the served policy's runtime guard (escalation). All start STOPPED;
turn them on in the UI (Automation) or with `dagster sensor start <name>`."""
