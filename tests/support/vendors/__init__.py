"""Local stand-ins for the SaaS the tests cannot reach, one module each: OpenAI (:mod:`.openai`), Anthropic
(:mod:`.anthropic`), Hugging Face (:mod:`.huggingface`), a generic API-key service (:mod:`.generic`), Google
(:mod:`.google`), GitHub (:mod:`.github`) and the Microsoft identity platform / Graph (:mod:`.microsoft`).
What they share is :mod:`.base` (every stand-in) and :mod:`.oauth` (the OAuth ones); what a stand-in must
provide is README.md beside this file; the pytest fixtures are :mod:`tests.support.vendor_fixtures`.
"""
