"""Is a newly embedded view of a tracked face still its visit's person? Three answers.

A track follows boxes, not people: someone who steps into the spot the last person
just left (a queue at a desk; a ``dir:`` folder of centred LFW photos) lands in the
same box. So each view embedded for a visit is compared with the visit's fused vector,
by the threshold faces are named at (``t``, 0.40 deployed):

- ``SAME``: the cosine reaches ``t`` (and, on a named visit, the view alone names no
  other enrolled person): the visit's name may be shown on it, and it may join the
  visit's attempts;
- ``OTHER``: under ``SOMEONE_ELSE * t`` (0.30): someone else (a folder of separate
  photos: also a photo that alone names another enrolled person); the visit engine
  splits the visit on it (clips: on a second one in a row, the first may be a glitch);
- ``UNSURE``: between the two, or a named visit's view that alone names another
  enrolled person: the face is shown unconfirmed (never under the visit's name, whose
  person this view may not be), is not fused into the visit, and is checked again at
  the next detection.

Why these bounds (scratch scripts, real YuNet + SFace, a visit's vector fused from views
by quality as the engine does): a person's next LFW photo against the fusion of their
earlier ones (300 random people with 2+ photos, up to 6 each: 682 next photos) scored
under 0.40 for 1.8% and under 0.30 for 0.3% (minimum 0.23); the 71 of them under half
the quality of the earlier best scored no lower (minimum 0.31), so a poor view in
question is judged like any other. A tracked person's views in the generated kiosk
videos (``bench.common.kiosk_video``, seeds 0-2, 15 videos: 6,153 views against the
visit they were tracked in, blur and occlusion included) never went under 0.456. One
person's first photo against the fusion of another's first three (89,700 pairs) was over
0.30 in 1.0% of pairs and over 0.40 in 0.03%.
"""

from __future__ import annotations

from enum import Enum

from edge.gallery.match import Match

# A view is someone else's under this fraction of the match threshold (0.30 at 0.40).
SOMEONE_ELSE = 0.75
# Correlation of consecutive aligned-crop thumbnails (16x16 grey, zero mean) under which a
# view is re-checked. Measured with scratch scripts: over bench.common.kiosk_video's 12
# videos of seeds 0-2 (approach, blur, occlusion, crossing; ~6,200 views of tracked
# faces) one person fell under 0.8 on 30 detections (0.48%; under 0.85: 72), and of
# 300 LFW people's aligned crops (44,850 pairs) two people were over 0.8 in 0.32% of
# pairs: such a newcomer waits for the periodic check (``recheck_seconds``).
CHANGE_BELOW = 0.8


class Verdict(Enum):
    SAME = "same"
    UNSURE = "unsure"
    OTHER = "other"


def judge(cosine: float, threshold: float, visit: Match | None, alone: Match | None,
          stills: bool) -> Verdict:
    """The verdict on a view scoring ``cosine`` against its visit's fused vector; ``visit``
    is the visit's match, ``alone`` the view's own match in the gallery (None: not
    looked up), ``stills`` a folder of separate photos."""
    other_name = (alone is not None and alone.known and visit is not None
                  and alone.person_id != visit.person_id)
    if cosine < SOMEONE_ELSE * threshold or (stills and other_name):
        # separate photos: one that alone names another enrolled person is that person (a
        # walkthrough's two look-alikes scored 0.365 against each other, over 3/4 of 0.38)
        return Verdict.OTHER
    if cosine < threshold or (other_name and visit is not None and visit.known):
        # an unknown visit's better views may name someone (a held-out photo fused with
        # the first ones): they join it; a named visit's view naming another does not
        return Verdict.UNSURE
    return Verdict.SAME
