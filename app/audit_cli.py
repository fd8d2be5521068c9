# Placeholder until the audit branch merges.
from flask.cli import AppGroup

audit_cli = AppGroup("audit")
