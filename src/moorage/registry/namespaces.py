"""Registry namespaces as the registry sees them: who owns one right now (what
every request's grant is checked against), and removing one with everything
it held."""

from __future__ import annotations

import asyncio
import time

from moorage.metadata import MetadataStore
from moorage.registry.errors import NameUnknown
from moorage.storage import BlobStore

# How long a namespace's owner is trusted from memory. A removal in this process
# takes effect at once; one in another process sharing the database, within this.
OWNER_TTL = 5.0


class NamespaceService:
    def __init__(
        self, metadata: MetadataStore, store: BlobStore, owner_ttl: float = OWNER_TTL
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.owner_ttl = owner_ttl
        self._owners: dict[tuple[str, str], tuple[str, float]] = {}

    def owner(self, region: str, name: str) -> str | None:
        """The account that owns a namespace now. Only owners are remembered, and
        briefly: an absent namespace is looked up each time, so one just created
        is found at once."""
        key = (region, name)
        cached = self._owners.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.owner_ttl:
            return cached[0]
        owner = self.metadata.namespace_owner(region, name)
        if owner is None:
            self._owners.pop(key, None)
        else:
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[key] = (owner, now)
        return owner

    async def remove(self, account_id: str, region: str, name: str) -> None:
        """One transaction removes the namespace, its repositories and its upload
        sessions; then the sessions' staged bytes go. If the process dies in
        between, start-up reconciliation deletes bytes that have no session."""
        uploads = await asyncio.to_thread(self.metadata.remove_namespace, account_id, region, name)
        self._owners.pop((region, name), None)
        if uploads is None:
            raise NameUnknown(f"namespace {name!r} not found in {region}")
        for upload_id in uploads:
            await self.store.discard_upload(upload_id)
