"""The Vulnerability Advisor: what is inside an image, which advisories name
it, and whether it may be deployed.

Pure parts first, the service last:

- ``model.py``: the values every part passes (found packages, layer indexes,
  image contents, advisories, findings, reports).
- ``layers.py``: one streaming pass over a layer tar, handing files to the
  detectors in ``detect/`` (chosen from a registry, one module per format);
  ``overlay.py`` stacks layer indexes with whiteouts into image contents.
- ``versions.py``, ``feeds.py``, ``match.py``: advisory data (OSV, Alpine
  secdb) imported as snapshots, versions compared as each package manager
  does, and packages matched to their distribution's own advisories.
- ``assess.py``: status, findings with fixes, configuration checks,
  exemptions; ``sbom.py``: CycloneDX and SPDX documents; ``scanners.py``:
  Harbor's pluggable scanner API as a client.
- ``indexer.py``: the durable queue any replica works on (leases), reading
  each layer once per indexer version.
"""
