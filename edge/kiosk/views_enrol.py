"""Enrolment pages: camera shots with per-shot feedback, or photo uploads."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk.activity import thumbnail_jpeg
from edge.kiosk.enrolment import DuplicateFace, EnrolmentRejected, Saved
from edge.kiosk.services import services
from edge.kiosk.views_live import status_payload

blueprint = Blueprint("enrol", __name__)


def _sid() -> str:
    return str(session.get("sid", ""))


def _saved_message(saved: Saved) -> str:
    photos = f"{saved.added} photo{'s' if saved.added != 1 else ''}"
    said = (f"Added {photos} to {saved.name}, who was already enrolled." if saved.existed
            else f"{saved.name} is enrolled with {photos}.")
    if saved.already:
        said += (f" {saved.already} photo{'s' if saved.already != 1 else ''} "
                 f"{saved.name} already had {'were' if saved.already != 1 else 'was'} not "
                 "added again.")
    if saved.group_photos:
        said += (f" {', '.join(saved.group_photos)} showed more than one face: the largest "
                 "was taken. Check the photos on the People page.")
    if saved.picked:
        said += (f" {', '.join(saved.picked)} showed more than one face: the one like the "
                 "other photos was taken.")
    if saved.left_out:
        said += (f" {', '.join(saved.left_out)} showed more than one face, none like the "
                 "other photos: not stored.")
    if saved.looks_like is not None:
        like = saved.looks_like
        # "remove NAME" deletes NAME's earlier photos too: not the advice for a person
        # who had some (helper-53)
        fix = (f"remove {saved.name} on the People page" if not saved.existed else
               f"remove {saved.name} or {like.match_name} on the People page (all of that "
               "name's photos go)")
        said += (f" Warning: these photos look like {like.match_name}, who is already "
                 f"enrolled (similarity {like.score:.2f}): if it is the same person, {fix}.")
    return said


@blueprint.route("/enrol")
def enrol() -> str:
    svc = services()
    return render_template("enrol.html", settings=svc.settings,
                           pending=svc.desk.pending(_sid()))


@blueprint.route("/enrol/camera/start", methods=["POST"])
def camera_start() -> BaseResponse:
    try:
        services().desk.start_camera(_sid(), request.form.get("name", ""))
    except EnrolmentRejected as exc:
        flash(str(exc), "error")
        return redirect(url_for("enrol.enrol"))
    return redirect(url_for("enrol.camera"))


@blueprint.route("/enrol/camera")
def camera() -> BaseResponse | str:
    svc = services()
    pending = svc.desk.pending(_sid())
    if pending is None:
        flash("Start a camera enrolment by entering the person's name.", "info")
        return redirect(url_for("enrol.enrol"))
    return render_template("enrol_camera.html", pending=pending, settings=svc.settings,
                           status=status_payload())


@blueprint.route("/enrol/camera/shot", methods=["POST"])
def camera_shot() -> BaseResponse:
    try:
        verdict = services().desk.take_shot(_sid())
    except EnrolmentRejected as exc:
        flash(str(exc), "error")
        return redirect(url_for("enrol.enrol"))
    flash(verdict.message, "error" if not verdict.ok else
          "warning" if verdict.warning else "success")
    return redirect(url_for("enrol.camera"))


@blueprint.route("/enrol/camera/shot/<int:index>.jpg")
def shot_jpeg(index: int) -> Response:
    pending = services().desk.pending(_sid())
    if pending is None or not 0 <= index < len(pending.shots):
        abort(404)
    return Response(thumbnail_jpeg(pending.shots[index].crop), mimetype="image/jpeg")


@blueprint.route("/enrol/camera/save", methods=["POST"])
def camera_save() -> BaseResponse | tuple[str, int]:
    svc = services()
    try:
        saved = svc.desk.save_camera(_sid(), confirmed=request.form.get("confirm") == "1")
    except DuplicateFace as exc:
        pending = svc.desk.pending(_sid())
        if pending is None:
            return redirect(url_for("enrol.enrol"))
        return render_template("enrol_duplicate.html", pending=pending, duplicate=exc,
                               threshold=svc.desk.match_threshold), 409
    except EnrolmentRejected as exc:
        flash(str(exc), "error")
        return redirect(url_for("enrol.camera"))
    flash(_saved_message(saved), "success")
    return redirect(url_for("people.people"))


@blueprint.route("/enrol/camera/cancel", methods=["POST"])
def camera_cancel() -> BaseResponse:
    services().desk.cancel(_sid())
    flash("Camera enrolment cancelled; nothing was stored.", "info")
    return redirect(url_for("enrol.enrol"))


@blueprint.route("/enrol/upload", methods=["POST"])
def upload() -> BaseResponse | tuple[str, int]:
    svc = services()
    files = [(f.filename or "", f.read()) for f in request.files.getlist("photos")]
    try:
        saved = svc.desk.enrol_uploads(request.form.get("name", ""), files)
    except EnrolmentRejected as exc:
        flash(str(exc), "error")
        # the name stays typed in: staff fix the photos, not everything (a browser does
        # not keep a file selection across a page load, so only the photos are asked again)
        return render_template("enrol.html", settings=svc.settings,
                               pending=svc.desk.pending(_sid()),
                               upload_name=request.form.get("name", "")), 400
    flash(_saved_message(saved), "success")
    return redirect(url_for("people.people"))
