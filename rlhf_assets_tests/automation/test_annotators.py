"""Annotator disagreement review: a day's kappa against the days before it, annotators against their own history."""

import polars as pl

from rlhf_assets.automation.annotators import add_flags, flag, read_flagged, review
from rlhf_assets.automation.settings import AutomationSettings
from rlhf_assets.storage import Storage

SETTINGS = AutomationSettings(max_kappa_drop=0.125, max_accuracy_drop=0.25, min_annotator_labels=20,
                              min_history_days=2)


def table(*rows: tuple[str, int, float | None]) -> pl.DataFrame:
    return pl.DataFrame({"annotator_id": [r[0] for r in rows], "n_labels": [r[1] for r in rows],
                         "accuracy": [r[2] for r in rows]}, schema={"annotator_id": pl.String, "n_labels": pl.Int64,
                                                                     "accuracy": pl.Float64})


HISTORY_TABLES = {"2026-03-01": table(("ann", 40, 0.875), ("bob", 40, 0.9)),
                  "2026-03-02": table(("ann", 40, 0.875), ("bob", 40, 0.9))}
DAY = "2026-03-03"


def run(today: pl.DataFrame, kappas: dict | None = None, tables: dict | None = None):
    tables = {**(tables if tables is not None else HISTORY_TABLES), DAY: today}
    kappas = kappas if kappas is not None else {"2026-03-01": 0.625, "2026-03-02": 0.625, DAY: 0.625}
    return review(DAY, kappas, tables, SETTINGS)


def test_a_steady_day_raises_nothing():
    r = run(table(("ann", 30, 0.875), ("bob", 30, 0.9)))
    assert (r.kappa_history, r.history_days, r.kappa_alarm, r.collapsed, r.alarm) == (0.625, 2, False, [], False)


def test_kappa_drop_just_over_the_limit_alarms_and_exactly_at_does_not():
    today = table(("ann", 30, 0.875))
    assert run(today, {"2026-03-01": 0.625, "2026-03-02": 0.625, DAY: 0.5}).kappa_alarm is False  # drop 0.125
    r = run(today, {"2026-03-01": 0.625, "2026-03-02": 0.625, DAY: 0.49})
    assert r.kappa_alarm and r.alarm and r.to_dict()["alarm"] is True


def test_days_without_a_kappa_are_left_out_of_the_history_and_a_day_without_one_raises_nothing():
    r = run(table(("ann", 30, 0.875)), {"2026-03-01": None, "2026-03-02": 0.75, DAY: 0.6})
    assert r.kappa_history == 0.75 and r.kappa_alarm
    assert run(table(("ann", 30, 0.875)), {"2026-03-01": 0.9, "2026-03-02": 0.9}).kappa_alarm is False


def test_too_few_earlier_days_judge_nothing():
    one_day = {"2026-03-01": HISTORY_TABLES["2026-03-01"]}
    r = run(table(("ann", 30, 0.1)), {"2026-03-01": 0.9, DAY: 0.1}, tables=one_day)
    assert (r.history_days, r.kappa_alarm, r.collapsed) == (1, False, [])


def test_later_days_are_not_history():
    tables = {**HISTORY_TABLES, "2026-03-09": table(("ann", 40, 0.1))}
    r = run(table(("ann", 30, 0.875)), {"2026-03-01": 0.625, "2026-03-02": 0.625, "2026-03-09": 0.0, DAY: 0.625},
            tables=tables)
    assert (r.history_days, r.kappa_history, r.alarm) == (2, 0.625, False)


def test_an_annotator_whose_accuracy_collapsed_is_listed_worst_first():
    r = run(table(("ann", 30, 0.5), ("bob", 30, 0.6), ("cat", 30, 0.1)))  # cat has no history
    assert [c["annotator_id"] for c in r.collapsed] == ["ann", "bob"]
    assert r.collapsed[0] == {"annotator_id": "ann", "accuracy": 0.5, "history": 0.875, "n_labels": 30, "drop": 0.375}
    assert r.alarm and not r.kappa_alarm


def test_accuracy_drop_exactly_at_the_limit_is_not_a_collapse():
    assert run(table(("ann", 30, 0.625))).collapsed == []  # 0.875 - 0.25
    assert [c["annotator_id"] for c in run(table(("ann", 30, 0.62))).collapsed] == ["ann"]


def test_history_is_label_weighted_and_ignores_missing_accuracy():
    tables = {"2026-03-01": table(("ann", 60, 1.0)), "2026-03-02": table(("ann", 20, 0.0), ("ann", 50, None))}
    r = run(table(("ann", 30, 0.25)), tables=tables)
    assert r.collapsed[0]["history"] == 0.75  # (60·1 + 20·0) / 80: the null day's labels do not count


def test_too_few_labels_today_or_in_history_are_not_judged():
    assert run(table(("ann", 19, 0.0))).collapsed == []
    thin = {"2026-03-01": table(("ann", 10, 0.9)), "2026-03-02": table(("ann", 9, 0.9))}
    assert run(table(("ann", 30, 0.0)), tables=thin).collapsed == []
    enough = {"2026-03-01": table(("ann", 10, 0.9)), "2026-03-02": table(("ann", 10, 0.9))}
    assert len(run(table(("ann", 20, 0.0)), tables=enough).collapsed) == 1


def test_missing_accuracy_today_is_not_a_collapse():
    assert run(table(("ann", 30, None), ("bob", 30, float("nan")))).collapsed == []


def test_flags_keep_the_first_day(tmp_path):
    store = Storage(tmp_path / "root")
    assert read_flagged(store) == {}
    first = run(table(("ann", 30, 0.5)))
    flagged = flag(store, first)
    assert flagged["ann"]["day"] == DAY and "0.500" in flagged["ann"]["reason"]
    later = review("2026-03-04", {}, {**HISTORY_TABLES, DAY: table(("ann", 30, 0.875)),
                                     "2026-03-04": table(("ann", 30, 0.1), ("bob", 30, 0.1))}, SETTINGS)
    flagged = flag(store, later)
    assert flagged["ann"]["day"] == DAY and flagged["bob"]["day"] == "2026-03-04"
    assert add_flags(store, {"ann": {"reason": "gold", "day": "x"}})["ann"]["day"] == DAY
    assert read_flagged(Storage(store.uri)) == flagged
