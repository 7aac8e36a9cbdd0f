"""mounttool's OCI distribution client: pull, push, login, logout, search.

``transport`` (HTTP keep-alive, TLS policy, proxies, auth retries, one-line errors) →
``client`` (the distribution API) → ``pull``/``push`` (the store, through the shared blob store
and ingest pipeline).  ``auth`` and ``credentials`` hold challenges, tokens and stored logins;
``downloads`` the resumable staging area; ``sources`` where blobs came from (for cross-repository
mounts); ``progress`` the terminal and line displays.  ``mounttool.cli_registry`` is the CLI.
"""
