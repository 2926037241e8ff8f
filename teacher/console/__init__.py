"""``gemma-teacher console``: the web page a teacher box serves beside ``serve``.

``cli`` starts it; ``app`` builds the ASGI app; ``web`` is what every route shares (the
guard, CSRF, pages); ``auth`` the exposure check, sessions and CSRF tokens; the routes are
``routes_queue`` (review queue, cases, verdicts), ``routes_releases`` (rollback, re-push),
``routes_report`` (fleet, flywheel) and ``routes_session`` (sign-in); ``catalog`` reads the
release registry and ``views`` computes the fleet and flywheel numbers. Templates and the
stylesheet and script live in ``templates/`` and ``static/`` (no build step).
"""
