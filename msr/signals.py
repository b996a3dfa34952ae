"""Events the registry core emits; webhooks, promotion and mirroring subscribe to them.

Sent inside the transaction that makes the change: receivers write their rows (audit
events, webhook deliveries, jobs) atomically with it, and queue work with
`transaction.on_commit`, so nothing is announced that did not happen and nothing that
happened goes unannounced.
"""

from django.dispatch import Signal

# kwargs: repository, manifest, tag (name or None), user
manifest_pushed = Signal()
# kwargs: repository, digest, tag (name or None), user; optional reason (a dict: why a
# rule, not a person, removed it, e.g. the tag limit)
manifest_deleted = Signal()
