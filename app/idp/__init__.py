"""AMI Auth as an OpenID Provider: keys, clients, consents, codes and tokens, back-channel logout, and the
Authlib server glue (issue 12)."""
