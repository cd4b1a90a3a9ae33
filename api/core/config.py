"""Settings for the run store, read from the environment (prefix ``LQ_``) or ``.env``.

This is the only module in the project that reads the environment.

==========================  ===========================================================
``LQ_DATA_DIR``             Where the default SQLite file lives (``./data``); created on
                            first start. The file is ``<LQ_DATA_DIR>/lightning_quant.db``.
``LQ_DATABASE_URL``         Any SQLAlchemy URL (``postgresql+psycopg://...``); overrides
                            the SQLite file in ``LQ_DATA_DIR``.
``LQ_API_TOKEN``            When set, every write (POST/PATCH/PUT/DELETE) needs
                            ``Authorization: Bearer <token>``.
``LQ_API_READ_TOKEN``       When set, reads need it too (or ``LQ_API_TOKEN``): a
                            private store. ``/health`` and ``/docs`` stay open.
``LQ_MAX_BODY_BYTES``       Largest request body accepted (413 above it).
``LQ_MAX_BATCH_POINTS``     Most metric values in one POST (413 above it).
==========================  ===========================================================
"""

from pathlib import Path

from pydantic import Field, computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "settings"]


class Settings(BaseSettings):
    """The run store's settings; field ``X`` is read from ``LQ_X``."""

    model_config = SettingsConfigDict(
        env_prefix="LQ_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    PROJECT_NAME: str = "lightning-quant run store"
    API_V1_STR: str = "/api/v1"

    DATA_DIR: Path = Path("./data")
    DATABASE_URL: str | None = None
    API_TOKEN: str | None = None
    API_READ_TOKEN: str | None = None

    MAX_BODY_BYTES: int = Field(default=8 * 1024 * 1024, ge=1024)
    MAX_BATCH_POINTS: int = Field(default=10_000, ge=1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def SQLALCHEMY_DATABASE_URI(self) -> str:
        """``DATABASE_URL`` if set, else the SQLite file in ``DATA_DIR``."""
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite:///{self.DATA_DIR / 'lightning_quant.db'}"


settings = Settings()
