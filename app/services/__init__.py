"""Services: the use cases the faces share — the HTML pages, the JSON API and the CLI call the same function,
so a rule and its audit events are written once (allauth's ``mfa/<factor>/internal/flows.py``).

A service takes the caller's Session and :class:`~app.audit.AuditContext`, applies the rules, records the
audit events (names and ids, never secret values) and never commits: the face commits once, after it.
Where a step fails, the service records the refusal before it raises, and the face commits that record too.
"""
