"""Jobs: small units of periodic work, callable from the CLI (``ami-auth jobs …``) and a scheduler.

Each takes a Session and Settings, commits its own work, and records an audit event.
"""
