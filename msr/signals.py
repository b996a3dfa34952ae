"""Events the registry core emits; webhooks, promotion and mirroring subscribe to them.

Sent after the transaction that made the change has committed, so receivers only ever
see content that is there.
"""

from django.dispatch import Signal

# kwargs: repository, manifest, tag (name or None), user
manifest_pushed = Signal()
# kwargs: repository, digest, tag (name or None), user
manifest_deleted = Signal()
