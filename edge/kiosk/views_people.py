"""The enrolled people, with removal behind a confirmation page."""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Blueprint, Response, abort, flash, redirect, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from edge.gallery.store import Person, UnknownPersonError
from edge.kiosk.activity import thumbnail_jpeg
from edge.kiosk.services import services

log = logging.getLogger(__name__)

blueprint = Blueprint("people", __name__)


def _person(person_id: int) -> Person:
    for person in services().gallery.people():
        if person.id == person_id:
            return person
    abort(404, "No such person (already removed?).")


@blueprint.app_template_filter("localtime")
def localtime(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


@blueprint.route("/people")
def people() -> str:
    return render_template("people.html", people=services().gallery.people())


@blueprint.route("/people/<int:person_id>/photo.jpg")
def photo(person_id: int) -> Response:
    """The person's first stored face crop (staff only, like every kiosk page)."""
    crop = services().gallery.person_crop(person_id)
    if crop is None:
        abort(404)
    return Response(thumbnail_jpeg(crop), mimetype="image/jpeg")


@blueprint.route("/people/<int:person_id>/remove", methods=["GET"])
def confirm_remove(person_id: int) -> str:
    return render_template("confirm_remove.html", person=_person(person_id))


@blueprint.route("/people/<int:person_id>/remove", methods=["POST"])
def remove(person_id: int) -> BaseResponse:
    svc = services()
    person = _person(person_id)
    try:
        crops = svc.gallery.remove_person(person.name)
    except UnknownPersonError:
        abort(404, "No such person (already removed?).")
    svc.activity.forget_person(person.id)
    log.info("kiosk removed person %d (%d crops)", person.id, crops)
    flash(f"{person.name} was removed with {crops} photo{'s' if crops != 1 else ''}.", "info")
    return redirect(url_for("people.people"))
