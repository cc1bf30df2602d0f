"""Automation: signed webhooks and polling that download, deploy and retrain through a
durable job queue.

The modules, bottom up (each imports only those above it, and ``errors``,
``jsonsafe``, ``fsutil``):

- ``signatures``: sans-IO checks of W&B, Standard Webhooks and GitHub deliveries;
- ``urls``: which URLs, hosts, addresses and local paths may be fetched;
- ``events``: a delivery's JSON body as a typed, allow-listed artifact event;
- ``rules``: which event runs which action (deploy, or retrain then deploy);
- ``jobs``: the SQLite job queue (leases, retries); ``worker``: its async worker;
- ``fetch``: HTTP(S) GETs guarded against SSRF;
- ``sources``: where artifacts come from (local folder, HTTP(S), W&B) and safe downloads;
- ``poll``: the outbound-only poller, for devices behind NAT.
"""
