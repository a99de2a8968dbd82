"""Registry namespaces as the registry sees them: who owns one right now (what
every request's grant is checked against), and removing one with everything
it held."""

from __future__ import annotations

from moorage.metadata import DatabaseThreads, MetadataStore
from moorage.metadata.cache import SharedCache
from moorage.metadata.changes import namespace_topic
from moorage.registry.errors import NameUnknown
from moorage.storage import BlobStore

# How long a namespace's owner is trusted from memory at most. A removal
# anywhere drops it at once through the change feed (in this process: before
# the removal returns); the lifetime bounds only a change the feed missed.
OWNER_TTL = 5.0


def _namespace_group(topic: str) -> tuple[str, str] | None:
    kind, _, rest = topic.partition(":")
    if kind != "ns":
        return None
    region, _, name = rest.partition(":")
    return (region, name)


class NamespaceService:
    def __init__(
        self,
        metadata: MetadataStore,
        store: BlobStore,
        owner_ttl: float = OWNER_TTL,
        db: DatabaseThreads | None = None,
    ) -> None:
        self.metadata = metadata
        self.store = store
        self.db = db or DatabaseThreads(2)
        changes = metadata.changes
        self._owners: SharedCache[tuple[str, str], str, str] = SharedCache(
            lambda: changes.healthy, owner_ttl, 100_000, _namespace_group
        )
        changes.subscribe(self._owners.changed)

    def owner(self, region: str, name: str) -> str | None:
        """The account that owns a namespace now (blocks on a cache miss). Only
        owners are remembered: an absent namespace is looked up each time, so
        one just created is found at once."""
        key = (region, name)
        cached = self._owners.get(key, "")
        if cached is not None:
            return cached
        stamp = self._owners.stamp()
        owner = self.metadata.namespace_owner(region, name)
        if owner is not None:
            self._owners.offer(key, "", owner, stamp)
        return owner

    async def owner_async(self, region: str, name: str) -> str | None:
        """``owner`` for the event loop: the database only on a cache miss, and
        then in a worker thread."""
        cached = self._owners.get((region, name), "")
        if cached is not None:
            return cached
        return await self.db.run(self.owner, region, name)

    async def remove(self, account_id: str, region: str, name: str) -> None:
        """One transaction removes the namespace, its repositories and its upload
        sessions; then the sessions' staged bytes go. If the process dies in
        between, start-up reconciliation deletes bytes that have no session."""
        uploads = await self.db.run(self.metadata.remove_namespace, account_id, region, name)
        self._owners.changed(namespace_topic(region, name))
        if uploads is None:
            raise NameUnknown(f"namespace {name!r} not found in {region}")
        for upload_id in uploads:
            await self.store.discard_upload(upload_id)
