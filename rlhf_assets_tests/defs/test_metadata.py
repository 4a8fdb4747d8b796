"""What the UI shows: numbers rounded for display, lists of records as native tables; the daily partitions' window;
the environment the demo's instance is opened with."""

import os
import subprocess
import sys

import dagster as dg

from rlhf_assets.defs.metadata import display, interval, mapping_table, rounded, table
from rlhf_assets.instance import write_ui_env
from rlhf_assets_tests.support import REPO


def test_rounded_keeps_four_significant_digits_and_leaves_the_rest():
    assert rounded(0.8235294117647058) == 0.8235
    assert rounded(-19.91926582629613) == -19.92
    assert rounded(2074.03218479861) == 2074.0  # never fewer digits than the integer part
    assert rounded(0.000123456) == 0.0001235
    assert rounded(0.0) == 0.0 and rounded(float("inf")) == float("inf")
    assert rounded({"a": [0.123456, 3, "x", None, True]}) == {"a": [0.1235, 3, "x", None, True]}
    assert interval(0.72022058, 0.9117647) == "[0.7202, 0.9118]" and interval(None, 0.5) == "—"


def test_display_rounds_numbers_and_turns_records_into_tables():
    out = display({"f": 0.123456789, "mf": dg.MetadataValue.float(1.23456789), "i": 3, "b": True, "s": "text",
                   "none": None, "mapping": {"p": 0.333333333}, "records": [{"x": 1.0000001, "y": "a"}],
                   "json_records": dg.MetadataValue.json([{"step": 1, "kl": 0.123456}]),
                   "empty": [], "md": dg.MetadataValue.md("# hi")})
    assert out["f"] == dg.MetadataValue.float(0.1235) and out["mf"] == dg.MetadataValue.float(1.235)
    assert (out["i"], out["b"], out["s"], out["none"]) == (3, True, "text", None)
    assert out["mapping"] == dg.MetadataValue.json({"p": 0.3333})
    assert isinstance(out["records"], dg.TableMetadataValue) and out["records"].records[0].data == {"x": 1.0, "y": "a"}
    kl = out["json_records"]
    assert [c.name for c in kl.schema.columns] == ["step", "kl"] and [c.type for c in kl.schema.columns] == ["int",
                                                                                                          "float"]
    assert kl.records[0].data == {"step": 1, "kl": 0.1235}
    assert out["empty"] == dg.MetadataValue.json([]) and out["md"] == dg.MetadataValue.md("# hi")


def test_table_picks_columns_and_shows_nested_values_as_text():
    t = table([{"a": 1, "b": [1, 2], "c": {"k": 0.5}, "d": None}, {"a": 2.5}], ["d", "a", "b", "c"])
    assert [c.name for c in t.schema.columns] == ["d", "a", "b", "c"]
    assert [c.type for c in t.schema.columns] == ["string", "float", "string", "string"]
    assert t.records[0].data == {"d": None, "a": 1, "b": "1, 2", "c": '{"k": 0.5}'}
    assert mapping_table({"platt": 0.44585, "isotonic": 0.24434}, "method", "log-loss").records[1].data == {
        "method": "isotonic", "log-loss": 0.2443}


def _partition_keys(env: dict[str, str]) -> list[str]:
    code = "from rlhf_assets.defs.partitions import daily_partitions as p; print(','.join(p.get_partition_keys()))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(",")


def test_daily_partitions_start_at_the_sample_data_and_take_a_window_from_the_environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_PARTITIONS_")}
    default = _partition_keys(env)
    assert default[0] == "2025-06-01" and len(default) > 3  # open-ended: through tomorrow
    window = _partition_keys(env | {"RLHF_PARTITIONS_START": "2025-06-01", "RLHF_PARTITIONS_END": "2025-06-04"})
    assert window == ["2025-06-01", "2025-06-02", "2025-06-03"]


def test_ui_env_file_is_sourced_by_a_shell_as_written(tmp_path):
    env = {"RLHF_STORAGE_ROOT": str(tmp_path / "a dir with 'quotes'"), "RLHF_PARTITIONS_START": "2025-06-01"}
    path = write_ui_env(tmp_path, env)
    shown = subprocess.run(["bash", "-c", f'set -a; . "{path}"; echo "$RLHF_STORAGE_ROOT|$RLHF_PARTITIONS_START"'],
                           capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert shown.strip() == f"{env['RLHF_STORAGE_ROOT']}|2025-06-01"
