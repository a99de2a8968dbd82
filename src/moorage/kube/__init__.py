"""Kubernetes integration: how the kubelet chooses registry credentials, and
(as issue 4 lands) clusters, pull secrets, diagnosis and the controller."""
