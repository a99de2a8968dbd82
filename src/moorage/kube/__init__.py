"""Kubernetes integration: how the kubelet chooses registry credentials
(keyring), the pull-secret workflows the CLI and the controller share, the
one table of workload kinds, diagnosis, migration off registry tokens, the
list-then-watch controller and the kubelet credential provider."""
