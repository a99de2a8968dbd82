"""Registry authorization: ES256 signing keys, the Docker token protocol, and
throttling of failed sign-ins. Registries verify tokens with the public keys
alone, without a database round trip."""
