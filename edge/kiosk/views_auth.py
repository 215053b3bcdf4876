"""Log in and out.

A password is only checked when the login gate admits the attempt
(``edge.kiosk.access``: per-client lockout, global backstop, a cap on concurrent hash
checks); a refused attempt gets 429 with ``Retry-After`` at once. A successful login
gives the browser a signed device cookie (no authority of its own, sent to /login only)
so the gate knows it again: it keeps its own failure budget, apart from its address.
Logging out ends the session on the server (``SessionEnds``): a copy of the old cookie
is refused from then on.
"""

from __future__ import annotations

import logging
import secrets

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, URLSafeTimedSerializer
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk.access import LoginRefused
from edge.kiosk.services import csrf_token, services

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)

DEVICE_COOKIE = "fedface_kiosk_device"
DEVICE_MAX_AGE_S = 180 * 24 * 3600  # renewed at each login on that browser


def _device_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key or b"", salt="fedface-kiosk-device")


def _device() -> str | None:
    """The id of a browser that logged in here before (its signed cookie), else None."""
    token = request.cookies.get(DEVICE_COOKIE)
    if not token:
        return None
    try:
        device = _device_signer().loads(token, max_age=DEVICE_MAX_AGE_S)
    except BadSignature:
        return None
    return device if isinstance(device, str) else None


def _wait_text(seconds: float) -> str:
    seconds = max(1, round(seconds))
    minutes, rest = divmod(seconds, 60)
    return (f"{minutes} min {rest} s" if rest else f"{minutes} min") if minutes else f"{rest} s"


def _refused(refused: LoginRefused) -> Response:
    wait = _wait_text(refused.retry_after)
    if refused.reason == "locked":
        error = f"Too many failed log-in attempts. Try again in {wait}."
    elif refused.reason == "crowded":
        error = ("Too many failed log-in attempts on this kiosk from other devices. Log in "
                 f"from a browser that has logged in here before, or try again in {wait}.")
    else:
        error = "The kiosk is busy checking other log-in attempts. Try again in a few seconds."
    response = Response(render_template("login.html", password_set=True, error=error), 429)
    response.headers["Retry-After"] = str(max(1, round(refused.retry_after)))
    return response


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    svc = services()
    if request.method != "POST":  # GET, and HEAD (which is no login attempt either)
        return render_template("login.html", password_set=svc.passwords.is_set())
    address = request.remote_addr or "unknown"
    device = _device()
    client = f"device:{device}" if device else f"address:{address}"
    known = " (a browser that logged in before)" if device else " (no device cookie)"
    try:
        with svc.gate.attempt(client, trusted=device is not None) as attempt:
            if svc.passwords.verify(request.form.get("password", "")):
                attempt.succeeded()
            else:
                attempt.failed()
    except LoginRefused as refused:
        log.warning("kiosk login attempt from %s%s refused before the password check: %s",
                    address, known, refused.reason)
        return _refused(refused)
    if attempt.outcome == "ok":
        session.clear()  # a fresh session: nothing from before the login carries over
        session.permanent = True  # expires with the idle timeout (create_app)
        session.update(user="staff", sid=secrets.token_urlsafe(16),
                       pwgen=svc.passwords.generation(), last_seen=svc.clock())
        csrf_token()
        log.info("kiosk login from %s%s", address, known)
        response = redirect(url_for("live.index"))
        response.set_cookie(DEVICE_COOKIE,
                            _device_signer().dumps(device or secrets.token_urlsafe(16)),
                            max_age=DEVICE_MAX_AGE_S, path=url_for("auth.login"),
                            secure=svc.settings.secure_cookies, httponly=True,
                            samesite="Strict")
        return response
    left = attempt.left
    log.warning("kiosk login failed from %s%s (%d attempts left)", address, known, left)
    message = "Wrong password."
    wait = _wait_text(svc.settings.login_window_s)
    if left == 0:  # not "0 attempts left before a wait" (helper-53)
        message += f" Too many failed attempts: log-ins from here wait {wait}."
    elif left <= 2:
        message += f" {left} attempt{'s' if left != 1 else ''} left before a {wait} wait."
    return Response(render_template("login.html", password_set=True, error=message), 401)


@blueprint.route("/logout", methods=["POST"])
def logout() -> BaseResponse:
    svc = services()
    sid = session.get("sid")
    if isinstance(sid, str):
        # a copy of this cookie must not work either; it expires with the idle timeout
        svc.session_ends.end(sid, svc.settings.idle_timeout_s)
        svc.desk.cancel(sid)  # a camera enrolment in progress: its shots are dropped
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
