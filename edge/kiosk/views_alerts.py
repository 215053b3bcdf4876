"""An unknown-face alert in detail (face, closest match, times) and enrolment from it.

The face crop stays in the kiosk's memory (``ActivityLog``) and is served, like every
kiosk image, only to a logged-in session; enrolling it stores it in the box's gallery.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk.activity import Entry
from edge.kiosk.enrolment import DuplicateFace, EnrolmentRejected
from edge.kiosk.services import services

log = logging.getLogger(__name__)

blueprint = Blueprint("alerts", __name__)


def _alert(entry_id: int) -> Entry:
    alert = services().activity.alert(entry_id)
    if alert is None or alert.crop is None:
        abort(404, "This alert is no longer kept (the kiosk keeps the most recent ones).")
    return alert


def _page(alert: Entry, status: int = 200, name: str = "",
          duplicate: DuplicateFace | None = None) -> tuple[str, int]:
    svc = services()
    return render_template("alert.html", alert=alert, name=name, duplicate=duplicate,
                           threshold=svc.desk.match_threshold), status


@blueprint.route("/alerts/<int:entry_id>")
def alert(entry_id: int) -> tuple[str, int]:
    return _page(_alert(entry_id))


@blueprint.route("/alerts/<int:entry_id>/ack", methods=["POST"])
def acknowledge(entry_id: int) -> BaseResponse:
    """This alert is dealt with (someone known, a delivery...), the others stay open."""
    if services().activity.acknowledge(_alert(entry_id).id):
        flash("Alert acknowledged.", "info")
    return redirect(url_for("live.index"))


@blueprint.route("/alerts/<int:entry_id>/enrol", methods=["POST"])
def enrol(entry_id: int) -> BaseResponse | tuple[str, int]:
    svc = services()
    entry = _alert(entry_id)
    assert entry.crop is not None
    name = request.form.get("name", "")
    confirmed = request.form.get("confirm") == "1"
    try:
        saved = svc.desk.enrol_crop(name, entry.crop, f"kiosk alert {entry.id}", confirmed)
    except DuplicateFace as exc:
        return _page(entry, 409, name, duplicate=exc)
    except EnrolmentRejected as exc:
        flash(str(exc), "error")
        return _page(entry, 400, name)
    svc.activity.mark_enrolled(entry.id, saved.name)
    log.info("kiosk enrolled alert %d as person %d", entry.id, saved.person_id)
    if saved.existed:
        flash(f"Added this face to {saved.name}, who was already enrolled.", "success")
    else:
        flash(f"{saved.name} is enrolled from the alert's face (1 photo). Add camera shots "
              "or photos later for better recognition.", "success")
    return redirect(url_for("people.people"))
