"""mounttool's OCI distribution client: pull, push, login, logout, search.

``transport`` (HTTP, TLS policy, auth retries, errors) → ``client`` (the distribution API) →
``pull``/``push`` (store integration through the shared blob store and ingest pipeline).
``auth`` and ``credentials`` hold challenges, tokens and stored logins; ``downloads`` the
resumable staging area; ``progress`` the terminal and line displays.
"""
