"""The live view: annotated camera image, faces in view, recognitions, alerts, status."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, abort, flash, jsonify, redirect, render_template, url_for
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk.services import services
from edge.kiosk.status import federation_status

blueprint = Blueprint("live", __name__)
NOT_LIVE_IN_VIEW = "no live image"


def _jpeg(data: bytes) -> Response:
    return Response(data, mimetype="image/jpeg")


def status_payload() -> dict[str, object]:
    svc = services()
    latest = svc.worker.latest()
    worker = svc.worker.status()
    return {
        "seq": latest.seq if latest else 0,
        "frame": latest.frame_index if latest else None,
        # a frozen frame's faces are not "in view": nobody is, as far as anyone knows
        "live": worker.live,
        "notice": worker.notice(has_picture=latest is not None),
        "last_frame_at": latest.timestamp if latest else None,
        "in_view": latest.labels() if latest and worker.live else [],
        "identifying": latest.identifying if latest and worker.live else 0,
        "recent": [e.to_dict() for e in svc.activity.recent()],
        "alerts": [e.to_dict() for e in svc.activity.alerts()],
        "unacked": svc.activity.unacknowledged(),
        "unknown_sightings": svc.activity.unknown_sightings,
        "worker": {"state": worker.state, "message": worker.message,
                   "ms_per_frame": round(worker.ms_per_frame, 1)},
        "model_version": svc.worker.model_version,
    }


@blueprint.route("/")
def index() -> str:
    svc = services()
    latest = svc.worker.latest()
    return render_template(
        "live.html", status=status_payload(), federation=federation_status(svc.data_dir),
        gallery_versions=svc.gallery.model_versions(), people=len(svc.gallery.people()),
        in_view=latest.caption() if latest else "nobody")


@blueprint.route("/live.jpg")
def live_jpeg() -> Response:
    worker = services().worker
    latest = worker.latest()
    if latest is None:
        abort(503, "No camera image yet.")
    status = worker.status()
    live = status.live
    response = _jpeg(latest.jpeg)
    response.headers["X-Frame-Seq"] = str(latest.seq)
    response.headers["X-Live"] = "1" if live else "0"
    if not live:
        response.headers["X-Notice"] = quote(status.notice(has_picture=True))
    # who is in this very frame, so the caption never lags the picture (UTF-8, %-quoted)
    response.headers["X-In-View"] = quote(latest.caption() if live else NOT_LIVE_IN_VIEW)
    return response


@blueprint.route("/api/status")
def status_json() -> Response:
    return jsonify(status_payload())


@blueprint.route("/thumb/<int:entry_id>.jpg")
def thumbnail(entry_id: int) -> Response:
    data = services().activity.thumbnail(entry_id)
    if data is None:
        abort(404)
    return _jpeg(data)


@blueprint.route("/alerts/ack", methods=["POST"])
def acknowledge() -> BaseResponse:
    count = services().activity.acknowledge_all()
    flash(f"{count} alert{'s' if count != 1 else ''} acknowledged.", "info")
    return redirect(url_for("live.index"))
