"""Who owns the assets: shown on every asset in the UI and filterable there (Dagster takes an email or
``team:<name>``). One team owns the whole loop today; a pillar handed to another team changes its assets' owners."""

OWNERS = ["team:rlhf"]
