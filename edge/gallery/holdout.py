"""The enrolled people a box keeps out of federated training: the faces each federated
model's own match threshold is measured on (edge.serving.calibration).

Why: a model's threshold is carried from the pretrained model's by how much the model
moved the scores of enrolled faces against other people's. Faces the federation trained
on score lower against everyone than a real stranger's do, more with every round on the
same people: on issue 18's realistic design in federations of 4 sites, strangers
accepted at the calibrated threshold rose from +0.7 points over the pretrained model at
round 1 to +8.5 at round 16, and to +2.0 (SE 1.2) when only faces nobody trained on were
scored (``python -m bench.federation.threshold_drift``; README, "Each model's own
threshold over many rounds").

Which: every ``EVERY``-th person by enrolment id (ids 5, 10, 15, ...). Stable: a person
never moves between training and calibration as people are enrolled or removed, so a
calibration face is one no round of this box ever trained on; the trainer and the
calibration tell them apart by the id alone. They are enrolled, recognised and checked by
the canary like everyone else; only their crops stay out of the training set.
"""

from __future__ import annotations

EVERY = 5  # one person in five: measured above; more costs the training more people


def is_calibration_person(person_id: int) -> bool:
    return int(person_id) % EVERY == 0
