"""Log in and out."""

from __future__ import annotations

import logging
import secrets

from flask import Blueprint, Response, flash, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk.services import csrf_token, services

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)


def _client() -> str:
    return request.remote_addr or "unknown"


def _wait_text(seconds: float) -> str:
    seconds = max(1, round(seconds))
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | str:
    svc = services()
    if request.method != "POST":  # GET, and HEAD (which is no login attempt either)
        return render_template("login.html", password_set=svc.passwords.is_set())
    client = _client()
    wait = svc.limiter.retry_after(client)
    if wait > 0:
        log.warning("kiosk login refused for %s: rate limit", client)
        body = render_template(
            "login.html", password_set=True,
            error=f"Too many failed log-in attempts. Try again in {_wait_text(wait)}.")
        response = Response(body, 429)
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    if svc.passwords.verify(request.form.get("password", "")):
        svc.limiter.succeeded(client)
        session.clear()  # a fresh session: nothing from before the login carries over
        session.permanent = True
        session.update(user="staff", sid=secrets.token_urlsafe(16),
                       pwgen=svc.passwords.generation(), last_seen=svc.clock())
        csrf_token()
        log.info("kiosk login from %s", client)
        return redirect(url_for("live.index"))
    left = svc.limiter.failed(client)
    log.warning("kiosk login failed from %s (%d attempts left)", client, left)
    message = "Wrong password."
    if left <= 2:
        message += f" {left} attempt{'s' if left != 1 else ''} left before a " \
                   f"{_wait_text(svc.settings.login_window_s)} wait."
    return Response(render_template("login.html", password_set=True, error=message), 401)


@blueprint.route("/logout", methods=["POST"])
def logout() -> BaseResponse:
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
