"""Tables of the state replicas share (migration 0005): signing keys, recent
failed sign-ins and the installation's own settings."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from moorage.metadata.models import Base


class SigningKeyRow(Base):
    """An ES256 signing key; the private key sealed under the server secret."""

    __tablename__ = "signing_keys"
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


class SigninFailure(Base):
    """One failed (or not yet forgiven) sign-in attempt against one throttle key."""

    __tablename__ = "signin_failures"
    __table_args__ = (Index("ix_signin_failures_key_at", "key", "at"),)
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    key: Mapped[str] = mapped_column(String(200))
    at: Mapped[float] = mapped_column(Float, index=True)  # seconds since the epoch


class InstallationSetting(Base):
    __tablename__ = "installation"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))
