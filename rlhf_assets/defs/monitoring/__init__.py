"""What the served traffic shows: the serving_log asset (observed, not materialized) and its checks."""
