"""The kiosk's Flask application: factory, login guard, CSRF, idle timeout, headers.

Security model (one staff password per box, see ``edge.kiosk.auth``):

- every page but the login form needs a logged-in session; the session is a signed
  cookie (HttpOnly, SameSite=Strict, Secure when configured) carrying no face data;
- a session idle for ``idle_timeout_s`` is cleared: pages redirect to the login form
  with a message, the live view's background requests get 401 (its script then goes to
  the login form). Only page views and form posts count as activity, so a kiosk left on
  the live view still logs out. The cookie itself expires after the same time (the
  browser drops it; the server refuses its signature after it);
- logging out ends the session on the server: a copy of the old cookie gets the login
  form (401 for background requests) like an expired one;
- changing the password (``fedface-edge kiosk set-password``) ends every session;
- every POST, login included, must carry the session's CSRF token (400 otherwise);
- pages send a CSP without inline scripts or styles, X-Frame-Options DENY and
  ``Cache-Control: no-store`` (face images must not stay in a browser cache).
"""

from __future__ import annotations

import hmac
import json
import logging
from datetime import timedelta
from typing import Any

from flask import Flask, Response, flash, redirect, render_template, request, session
from flask import url_for as flask_url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from edge.kiosk import views_alerts, views_auth, views_enrol, views_live, views_people
from edge.kiosk.auth import KioskAuthError, load_or_create_secret_key
from edge.kiosk.services import EXTENSION, KioskServices, csrf_token, services

log = logging.getLogger(__name__)

EXPIRED_NOTICE_S = 12 * 3600  # how long after expiry a returning browser is told so
PUBLIC_ENDPOINTS = frozenset({"static", "auth.login"})
# Background requests of the live view: they need a session but do not keep it alive.
PASSIVE_ENDPOINTS = frozenset({"live.live_jpeg", "live.status_json", "live.thumbnail",
                               "enrol.shot_jpeg", "people.photo"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "object-src 'none'")


def wants_json() -> bool:
    return request.endpoint in PASSIVE_ENDPOINTS or request.path.startswith("/api/")


def _csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    return isinstance(expected, str) and hmac.compare_digest(expected, given)


def _session_problem(svc: KioskServices) -> str | None:
    """None if the session is logged in and fresh, else why it is not."""
    if not session.get("user"):
        return "login"
    try:
        generation = svc.passwords.generation()
    except KioskAuthError:
        return "login"
    if session.get("pwgen") != generation:
        return "password"
    if svc.session_ends.ended(session.get("sid")):
        return "ended"
    last_seen = session.get("last_seen")
    if not isinstance(last_seen, (int, float)) or \
            svc.clock() - last_seen > svc.settings.idle_timeout_s:
        return "expired"
    return None


def _guard() -> BaseResponse | None:
    svc = services()
    if request.method == "POST" and not _csrf_ok():
        return render_error(400, "This form has expired or did not come from this kiosk "
                                 "(security check failed). Reload the page and try again.")
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    problem = _session_problem(svc)
    if problem is not None:
        was_logged_in = bool(session.get("user"))
        if was_logged_in:
            # keep an anonymous session (its CSRF token is in an open login form)
            session.clear()
        # said also when the live page's poll is the request that finds the session
        # expired: the page then goes to the login form, which shows it (it showed a
        # bare form, as if the guard had logged out: helper-53)
        if problem == "expired" and was_logged_in:
            idle = svc.settings.idle_timeout_s  # "0.333333 minutes" for 20 s (helper-56)
            after = f"{idle / 60:g} minutes" if idle % 60 == 0 else f"{idle:g} seconds"
            flash(f"Your session expired after {after} without activity. "
                  "Please log in again.", "warning")
        elif problem == "password":
            flash("The kiosk password was changed. Please log in again.", "warning")
        elif problem == "ended":
            flash("This session was logged out. Please log in again.", "warning")
        if wants_json():
            return Response(json.dumps({"error": "login required", "login": "/login"}), 401,
                            mimetype="application/json")
        return redirect(flask_url_for("auth.login"))
    if request.endpoint not in PASSIVE_ENDPOINTS:
        session["last_seen"] = svc.clock()
    return None


def _headers(response: BaseResponse) -> BaseResponse:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def render_error(status: int, message: str) -> BaseResponse:
    if wants_json():
        return Response(json.dumps({"error": message}), status, mimetype="application/json")
    return Response(render_template("error.html", status=status, message=message), status)


def _http_error(exc: HTTPException) -> BaseResponse:
    code = exc.code or 500
    if code == 413:
        limit = services().settings.max_upload_bytes / (1024 * 1024)
        return render_error(413, f"The upload is too large (at most {limit:g} MB in total). "
                                 "Nothing was stored. Choose a smaller photo.")
    messages = {404: "There is no such page.",
                405: "That action is not possible on this page."}
    return render_error(code, messages.get(code, exc.description or exc.name))


def _template_globals() -> dict[str, Any]:
    svc = services()
    return {"csrf_token": csrf_token, "logged_in": bool(session.get("user")),
            "unacked_alerts": svc.activity.unacknowledged() if session.get("user") else 0}


def create_app(svc: KioskServices) -> Flask:
    """The Flask app of one kiosk; ``svc`` holds the running worker and stores."""
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.config.update(
        SECRET_KEY=load_or_create_secret_key(svc.data_dir),
        SESSION_COOKIE_NAME="fedface_kiosk",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=svc.settings.secure_cookies,
        # Only a response that changed the session sets the cookie. By default every
        # response to a permanent session does, so a background poll (PASSIVE_ENDPOINTS)
        # in flight while a form posts could arrive last and put back the session as it
        # was before the post, losing that post's flash message or fresh CSRF token.
        # Activity (every other request) still moves last_seen, which rewrites it.
        SESSION_REFRESH_EACH_REQUEST=False,
        # The server ends an idle session (_session_problem); the browser keeps the
        # cookie EXPIRED_NOTICE_S longer so that the staff coming back to the screen
        # are told their session expired, not shown a bare login form (a browser that
        # dropped the cookie with the session sends nothing to say why).
        PERMANENT_SESSION_LIFETIME=timedelta(
            seconds=svc.settings.idle_timeout_s + EXPIRED_NOTICE_S),
        MAX_CONTENT_LENGTH=svc.settings.max_upload_bytes,
        MAX_FORM_MEMORY_SIZE=svc.settings.max_upload_bytes,
        SEND_FILE_MAX_AGE_DEFAULT=300,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.extensions[EXTENSION] = svc
    app.before_request(_guard)
    app.after_request(_headers)
    app.context_processor(_template_globals)
    app.register_error_handler(HTTPException, _http_error)
    for module in (views_auth, views_live, views_alerts, views_enrol, views_people):
        app.register_blueprint(module.blueprint)
    return app
