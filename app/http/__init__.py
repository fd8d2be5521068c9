"""What both HTTP faces share — the HTML pages (:mod:`app.web`) and the JSON API (:mod:`app.api`): who is
asking (the signed-in session, the client's address, the audit context; :mod:`app.http.context`) and the one
CSRF rule (:mod:`app.http.csrf`). A layer under the faces, so neither face imports the other for them.
"""
