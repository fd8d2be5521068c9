# Placeholder until the vault branch merges.
from flask.cli import AppGroup

keys_cli = AppGroup("keys")
