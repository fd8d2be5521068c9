"""gunicorn reads this file from the working directory: AMI Auth's settings (app/gunicorn_conf.py)."""

from app.gunicorn_conf import *  # noqa: F403
