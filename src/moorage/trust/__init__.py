"""Signature formats and their verification, as pure functions: cosign (the
``.sig`` tag form, OCI 1.1 referrers and sigstore bundles), Red Hat simple
signing with OpenPGP, and notation envelopes. The registry lists signatures
with them; the admission webhook decides with them."""
