"""Container image security enforcement: an admission webhook that admits a
pod, or anything that makes pods, only when every image it names matches a
policy and carries the signatures that policy asks for, and pins each image
to the digest it verified. Policies are ``moorage.io/v1`` ImagePolicy and
ClusterImagePolicy objects in Portieris' schema (see docs/enforcement.md)."""
