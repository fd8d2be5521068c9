"""Connectors: header generation for API-key providers, connectivity tests, SMTP accounts.

The SMTP client itself, and the :class:`~app.mailer.Mailer` of the app's own mail, are infrastructure
(:mod:`app.mailer`); an SMTP account an admin marks as the system mailer reaches it through
:func:`app.connectors.smtp.system_mailer`, which the app factory registers there.
"""
