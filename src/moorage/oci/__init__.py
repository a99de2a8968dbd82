"""Pure OCI domain rules: digests, names and manifests. No I/O lives here, so
every other layer may import it."""

from moorage.oci.digest import Digest, DigestError, new_hasher, parse_digest
from moorage.oci.manifest import ManifestError, ParsedManifest, parse_manifest
from moorage.oci.names import NameError_, is_digest, validate_name, validate_tag

__all__ = [
    "Digest",
    "DigestError",
    "ManifestError",
    "NameError_",
    "ParsedManifest",
    "is_digest",
    "new_hasher",
    "parse_digest",
    "parse_manifest",
    "validate_name",
    "validate_tag",
]
