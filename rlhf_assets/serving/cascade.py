"""The student → teacher cascade: a distilled student (rm_distilled) scores every comparison; those whose calibrated
preference lies within ``band`` of 0.5 — where the student is unsure — are scored again by the teacher (the routed
reward model), whose answer replaces the student's. Pure numpy: the service (app.py) applies it per request, and
rm_distilled and the cost-fidelity bench evaluate it offline on held-out pairs with the same functions.
"""

from __future__ import annotations

import numpy as np


def escalate(p_student: np.ndarray, band: float) -> np.ndarray:
    """Which items go to the teacher: |P(a ≻ b) − 0.5| ≤ band (band 0: only exact ties; 0.5: everything)."""
    if not 0.0 <= band <= 0.5:
        raise ValueError(f"cascade band must be in [0, 0.5], got {band!r}")
    return np.abs(np.asarray(p_student, dtype=np.float64) - 0.5) <= band


def combine(p_student: np.ndarray, p_teacher: np.ndarray, escalated: np.ndarray) -> np.ndarray:
    """The cascade's answer: the teacher's probability where escalated, the student's elsewhere."""
    return np.where(escalated, p_teacher, p_student)


def evaluate_cascade(p_student: np.ndarray, p_teacher: np.ndarray, y: np.ndarray, band: float,
                     student_cost: float, teacher_cost: float) -> dict[str, float]:
    """Held-out figures of a cascade: the share escalated, accuracy and ECE of the student, the teacher and the
    cascade on the same (oriented) pairs ``y``, and the cascade's cost per item (the student always runs; the teacher
    on the escalated share) in the unit of the costs given, with its ratio to the teacher's alone."""
    from rlhf_assets.reward.metrics import accuracy, expected_calibration_error

    p_student, p_teacher = np.asarray(p_student, float), np.asarray(p_teacher, float)
    sent = escalate(p_student, band)
    p = combine(p_student, p_teacher, sent)
    share = float(sent.mean()) if sent.size else float("nan")
    cost = student_cost + share * teacher_cost
    return {"band": float(band), "n": int(sent.size), "n_escalated": int(sent.sum()), "share_escalated": share,
            "accuracy_student": accuracy(p_student, y), "accuracy_teacher": accuracy(p_teacher, y),
            "accuracy_cascade": accuracy(p, y), "ece_cascade": expected_calibration_error(p, y),
            "cost_per_item": cost, "cost_vs_teacher": cost / teacher_cost if teacher_cost > 0 else float("nan")}
