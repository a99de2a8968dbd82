"""The language detectors through the layer reader and the overlay: a gzipped
layer holding what go, cargo auditable, pip, npm and mvn produced here, laid
out as an application image has it, comes out as the purls advisories are
matched on; a jar over the nesting bounds marks its layer PARTIAL."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from moorage.va.layers import index_layer
from moorage.va.model import LayerState
from moorage.va.overlay import overlay
from tests import va_lang_artifacts as artifacts


def _layer(files: dict[str, Path | bytes]) -> tuple[bytes, str]:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, source in files.items():
            if isinstance(source, Path):
                tar.add(source, arcname=name)
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(source), 0o644
                tar.addfile(info, io.BytesIO(source))
    data = out.getvalue()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def test_an_application_layer_yields_every_ecosystems_purls() -> None:
    go, rust, jars = artifacts.go_binaries(), artifacts.rust_binary(), artifacts.maven_jars()
    npm, site = artifacts.npm_project(3), artifacts.wheels() / "site"
    gson = (jars / "gson-2.13.1.jar").read_bytes()
    data, digest = _layer(
        {
            "usr/local/bin/hello": go / "hello",
            "usr/local/bin/vahello": rust / "vahello",
            "srv/rust/Cargo.lock": rust / "Cargo.lock",
            "usr/local/go/src/go.mod": go / "src" / "go.mod",  # source: not indexed
            "usr/lib/python3/site-packages": site,
            "srv/app": npm,
            "opt/app/app.jar": artifacts.fat_jar({"BOOT-INF/lib/gson-2.13.1.jar": gson}),
        }
    )
    layer = index_layer(io.BytesIO(data), digest)
    assert layer.state is LayerState.COMPLETE, layer.reason
    contents = overlay([layer])
    purls = {p.purl for p in contents.packages}
    go_version = next(p.version for p in contents.packages if p.name == "stdlib")
    assert {
        "pkg:golang/github.com/google/uuid@v1.6.0",
        "pkg:golang/golang.org/x/text@v0.13.0",
        f"pkg:golang/stdlib@{go_version}",
        "pkg:cargo/itoa@1.0.11",
        "pkg:pypi/requests@2.31.0",
        "pkg:pypi/pyyaml@6.0.1",
        "pkg:npm/%40types/node@20.11.0",
        "pkg:npm/ms@2.1.3",
        "pkg:maven/com.google.code.gson/gson@2.13.1",
        "pkg:maven/com.example/app@1.2.3",
    } <= purls
    assert all(p.layer == digest for p in contents.packages)
    # The go.mod's requirements are not packages of the image, nor is the app itself.
    assert not any(p.found.path.endswith("go.mod") for p in contents.packages)
    assert not any(p.name == "app" and p.type.value == "npm" for p in contents.packages)
    # Found twice (lock file and installed manifest), once per declaring file.
    assert sum(p.purl == "pkg:npm/ms@2.1.3" for p in contents.packages) == 2


def test_a_jar_past_the_nesting_bound_marks_the_layer_partial() -> None:
    deep = artifacts.fat_jar({})
    for level in range(5):
        deep = artifacts.fat_jar({f"lib/level{level}.jar": deep})
    data, digest = _layer({"opt/app/deep.jar": deep})
    layer = index_layer(io.BytesIO(data), digest)
    assert layer.state is LayerState.PARTIAL
    assert "nested deeper than 3" in layer.reason
    assert {p.purl for p in overlay([layer]).packages} == {"pkg:maven/com.example/app@1.2.3"}
