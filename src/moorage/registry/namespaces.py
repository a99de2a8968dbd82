"""Registry namespaces as the registry sees them: removing one removes
everything it held, and the tokens issued for it stop working."""

from __future__ import annotations

import time

from moorage.metadata import MetadataStore
from moorage.registry.errors import NameUnknown
from moorage.storage import BlobStore

# Tokens live at most an hour (auth.token_lifetime); a removal older than that
# can no longer be outlived by any token issued before it.
MAX_TOKEN_LIFETIME = 3600


class NamespaceService:
    def __init__(self, metadata: MetadataStore, store: BlobStore) -> None:
        self.metadata = metadata
        self.store = store
        self._removed: dict[tuple[str, str], float] = {}

    def remove(self, account_id: str, region: str, name: str) -> None:
        """One transaction removes the namespace, its repositories and its upload
        sessions; then the sessions' staged bytes go. If the process dies in
        between, start-up reconciliation deletes bytes that have no session."""
        uploads = self.metadata.remove_namespace(account_id, region, name)
        if uploads is None:
            raise NameUnknown(f"namespace {name!r} not found in {region}")
        self._removed[(region, name)] = time.time()
        for upload_id in uploads:
            self.store.discard_upload(upload_id)
        self._forget_old()

    def removed_after(self, region: str, name: str, issued_at: float) -> bool:
        """Whether the namespace was removed after a token was issued: its grants on
        the namespace died with it, even if another account claims the name."""
        removed = self._removed.get((region, name))
        return removed is not None and removed >= issued_at

    def _forget_old(self) -> None:
        horizon = time.time() - MAX_TOKEN_LIFETIME - 60
        for key in [k for k, at in self._removed.items() if at < horizon]:
            del self._removed[key]
