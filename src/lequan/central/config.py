"""Central's settings: every knob and limit a typed field (prefix ``LEQUAN_CENTRAL_``).

Its own data directory, store, key file, address and limits, apart from any
province's: central is a separate service, often run by another operator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["CentralSettings"]


class CentralSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEQUAN_CENTRAL_", extra="ignore", frozen=True)

    # Where the default SQLite file and the generated key file live.
    data_dir: Path = Path("lequan-data/central")
    # Empty: SQLite in data_dir. PostgreSQL: postgresql+psycopg://user@host:5432/db
    database_url: str = ""
    # Empty: nonces in process memory (one worker). Set for --workers > 1.
    redis_url: str = ""
    redis_key_prefix: Annotated[str, Field(max_length=40)] = "lqc:"
    # The key file (lequan's format) that encrypts the provinces' secrets and the
    # OPRF key's seed in the store. Empty: data_dir/keys.json, made on first start.
    key_file: Path | None = None

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8100
    workers: Annotated[int, Field(ge=1, le=64)] = 1

    signature_max_skew_s: Annotated[int, Field(ge=1, le=3600)] = 300
    nonce_cache_entries_max: Annotated[int, Field(ge=1000)] = 2_000_000
    # A batch of 1,000 consumptions with their products is about 400 kB.
    request_body_bytes_max: Annotated[int, Field(ge=1024, le=100_000_000)] = 4_000_000
    http_connections_max: Annotated[int, Field(ge=16, le=100_000)] = 1024
    http_keep_alive_s: Annotated[int, Field(ge=1, le=300)] = 30
    store_lock_timeout_ms: Annotated[int, Field(ge=10, le=600_000)] = 5000
    store_statement_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 60_000
    store_pool_size: Annotated[int, Field(ge=1, le=256)] = 16
    # Holds past their time count as free at once; the sweep marks them expired.
    sweep_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    sweep_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 1000

    log_json: bool | None = None
    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'central.db').as_posix()}"

    @property
    def effective_key_file(self) -> Path:
        return self.key_file if self.key_file is not None else self.data_dir / "keys.json"
