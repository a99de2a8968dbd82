"""``admission.k8s.io/v1`` AdmissionReview, read strictly and answered
plainly: what was asked (a typed request), where the images of each kind
live (``moorage.kube.workloads``), and the reply with its JSONPatch."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from moorage.kube.workloads import BY_KIND, WorkloadKind

API_VERSION = "admission.k8s.io/v1"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
MAX_IMAGES = 100  # distinct images in one object; each may cost a verification


class ReviewError(ValueError):
    """A body that is not an AdmissionReview we can answer; ``uid`` is set
    when there is a request to deny rather than a body to refuse."""

    def __init__(self, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.message, self.uid = message, uid


@dataclass(frozen=True)
class Request:
    uid: str
    kind: str  # "Deployment"
    workload: WorkloadKind | None  # None: a kind this webhook does not handle
    namespace: str
    name: str
    operation: str
    object: dict[str, Any]
    old_object: dict[str, Any] | None
    dry_run: bool
    sub_resource: str

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name or '(generated name)'}"


def parse(body: bytes) -> Request:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise ReviewError("the body is not JSON") from None
    if not isinstance(document, dict):
        raise ReviewError("the body is not a JSON object")
    if document.get("apiVersion") != API_VERSION or document.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected an AdmissionReview of {API_VERSION}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise ReviewError("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > 128:
        raise ReviewError("the request has no uid")
    kind_block = request.get("kind")
    kind = kind_block.get("kind") if isinstance(kind_block, dict) else None
    if not isinstance(kind, str):
        raise ReviewError("the request names no kind", uid)
    obj = request.get("object")
    old = request.get("oldObject")
    operation = str(request.get("operation") or "")
    if operation not in OPERATIONS:
        raise ReviewError(
            f"operation {operation[:20]!r} is not one of {', '.join(OPERATIONS)}", uid
        )
    if operation in ("CREATE", "UPDATE") and not isinstance(obj, dict):
        raise ReviewError(f"the {operation} request carries no object", uid)
    meta = (obj or {}).get("metadata") if isinstance(obj, dict) else None
    return Request(
        uid=uid,
        kind=kind,
        workload=BY_KIND.get(kind),
        namespace=str(request.get("namespace") or ""),
        name=str(request.get("name") or (meta or {}).get("name") or ""),
        operation=operation,
        object=obj if isinstance(obj, dict) else {},
        old_object=old if isinstance(old, dict) else None,
        dry_run=bool(request.get("dryRun")),
        sub_resource=str(request.get("subResource") or ""),
    )


@dataclass(frozen=True)
class ImageSite:
    pointer: str  # JSON pointer of the container's image field
    container: str
    image: str


def _escape(step: str) -> str:
    return step.replace("~", "~0").replace("/", "~1")


def images(kind: WorkloadKind, obj: dict[str, Any]) -> list[ImageSite]:
    """Every container image of an object, with the JSON pointer to patch it."""
    node: Any = obj
    prefix = ""
    for step in kind.template or ("spec",):
        node = node.get(step) if isinstance(node, dict) else None
        prefix += "/" + _escape(step)
    if node is None:
        return []
    if not isinstance(node, dict):
        raise ValueError(f"{prefix} is not an object")
    found = []
    for field in CONTAINER_LISTS:
        containers = node.get(field)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise ValueError(f"{prefix}/{field} is not a list")
        for i, container in enumerate(containers):
            if not isinstance(container, dict):
                raise ValueError(f"{prefix}/{field}/{i} is not an object")
            image = container.get("image")
            if image is None:
                continue
            if not isinstance(image, str):
                raise ValueError(f"{prefix}/{field}/{i}/image is not a string")
            found.append(
                ImageSite(f"{prefix}/{field}/{i}/image", str(container.get("name") or ""), image)
            )
    return found


def review(
    uid: str, allowed: bool, message: str = "", patch: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": message}
    elif message:
        response["status"] = {"code": 200, "message": message}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
