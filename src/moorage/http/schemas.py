"""Request bodies of the management API, as pydantic models: parsed and
checked in one step (unknown fields, wrong types and oversized strings get a
400 that names the field), and published as JSON Schema in the OpenAPI
document. The rules of IAM itself (name patterns, role names, regions) stay in
the services, which say what is wrong in their own words."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

Name = Annotated[str, Field(min_length=1, max_length=100)]
Email = Annotated[str, Field(min_length=3, max_length=254)]
Secret = Annotated[str, Field(min_length=1, max_length=4096)]
Optional = Annotated[str | None, Field(default=None, max_length=1000)]


def _no_nul(value: object) -> object:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if isinstance(value, list):
        for item in value:
            _no_nul(item)
    return value


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # No text the database keeps may hold a NUL: PostgreSQL refuses it (SQLite
    # took it), and no name, description or email needs one.
    @field_validator("*")
    @classmethod
    def _text_without_nul(cls, value: object) -> object:
        return _no_nul(value)


class AccountCreate(Body):
    name: Name
    admin_email: Email


class UserInvite(Body):
    email: Email
    password: Annotated[str, Field(min_length=12, max_length=1024)]


class ServiceIdCreate(Body):
    name: Name
    description: Optional = None


class PolicyCreate(Body):
    roles: Annotated[
        list[Annotated[str, Field(max_length=40)]] | Annotated[str, Field(max_length=400)],
        Field(description="role names, as a list or comma-separated"),
    ]
    service_name: Annotated[str, Field(max_length=64)]
    region: Annotated[str | None, Field(max_length=64)] = None
    resource_type: Annotated[str | None, Field(max_length=32)] = None
    resource: Annotated[str | None, Field(max_length=64)] = None


class ApiKeyCreate(Body):
    name: Name
    description: Optional = None


class ApiKeyUpdate(Body):
    name: Annotated[str | None, Field(min_length=1, max_length=100)] = None
    description: Optional = None


class NamespaceCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=64)]


class ImageTag(Body):
    source: Annotated[str, Field(min_length=1, max_length=512)]
    target: Annotated[str, Field(min_length=1, max_length=512)]


class TokenCreate(Body):
    description: Optional = None
    readwrite: bool = False
    non_expiring: bool = False


class PullCheckRequest(Body):
    registry: Annotated[str, Field(min_length=1, max_length=300)]
    repository: Annotated[str, Field(min_length=1, max_length=512)]
    username: Annotated[str, Field(max_length=300)]
    password: Secret


class SignerCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    public_key: Annotated[str, Field(min_length=1, max_length=32 * 1024)]


class ExemptionCreate(Body):
    scope: Annotated[
        str,
        Field(
            min_length=1,
            max_length=400,
            description="*, NAMESPACE, NAMESPACE/REPO, NAMESPACE/REPO:TAG or NAMESPACE/REPO@DIGEST",
        ),
    ]
    issue_type: Annotated[str, Field(max_length=40, description="cve or configuration")]
    issue_id: Annotated[str, Field(min_length=1, max_length=200)]
    expires: Annotated[str | None, Field(max_length=40)] = None
    reason: Annotated[str, Field(max_length=1000)] = ""
