"""Settings: every knob and every limit as a typed field (prefix ``LEQUAN_``).

Nothing here is read at import time; ``Settings()`` is built once by the
entry point and handed to ``bootstrap``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEQUAN_", extra="ignore", frozen=True)

    # Where the embedded default keeps its SQLite file and generated key file.
    data_dir: Path = Path("lequan-data")
    # Empty: SQLite in data_dir (the embedded default). PostgreSQL:
    # postgresql+psycopg://user@host:5432/db
    database_url: str = ""
    # Empty: the in-process claim gate and nonce store (one process only).
    redis_url: str = ""
    redis_key_prefix: Annotated[str, Field(max_length=40)] = "lq:"
    # redis_url names a node of a Redis Cluster (the client finds the others).
    redis_cluster: bool = False
    # Each pool's stock split over this many buckets, each its own hash slot,
    # so one hot campaign spreads over a cluster's shards. Every process of
    # one deployment must use the same value.
    gate_buckets: Annotated[int, Field(ge=1, le=1024)] = 1
    # Connections one process keeps to Redis for the gate and for the nonce store
    # (a call waits for a free one), and how long a call or a wait may take.
    redis_connections_max: Annotated[int, Field(ge=1, le=1024)] = 64
    redis_nonce_connections_max: Annotated[int, Field(ge=1, le=1024)] = 32
    redis_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # Every PostgreSQL session of the store: a statement waiting longer than this
    # for a row lock gives up (a retryable 503) instead of holding its thread and
    # what queues behind it; no statement runs longer than the second.
    store_lock_timeout_ms: Annotated[int, Field(ge=10, le=600_000)] = 2000
    store_statement_timeout_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 60_000
    # Start even on a PostgreSQL that may lose a commit it acknowledged (fsync off,
    # synchronous_commit off, ...): for a throwaway test database only.
    allow_unsafe_durability: bool = False
    # Key file (JSON) with the field-encryption and blind-index keys. Empty: the
    # embedded default generates data_dir/keys.json on first run.
    key_file: Path | None = None

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1, le=64)] = 1

    signature_max_skew_s: Annotated[int, Field(ge=1, le=3600)] = 300
    nonce_cache_entries_max: Annotated[int, Field(ge=1000)] = 2_000_000
    request_body_bytes_max: Annotated[int, Field(ge=1024)] = 2_000_000
    # Operators' uploads, each bounded on its own (and, over HTTP, by the body limit
    # too): a campaign file's bytes, its nesting and its nodes once YAML aliases are
    # expanded; a merchant file's bytes and rows. Beyond: 413, or 422 with the rule.
    campaign_file_bytes_max: Annotated[int, Field(ge=1024, le=100_000_000)] = 1_000_000
    campaign_file_depth_max: Annotated[int, Field(ge=8, le=200)] = 32
    campaign_file_nodes_max: Annotated[int, Field(ge=1000, le=10_000_000)] = 200_000
    merchant_file_bytes_max: Annotated[int, Field(ge=1024, le=1_000_000_000)] = 2_000_000
    merchant_file_rows_max: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    # What an unauthenticated caller can make a process hold (docs/operations.md,
    # "The edge"): a request's line and headers at most http_header_bytes_max bytes
    # (431), arriving within http_header_timeout_s (408); its body within
    # http_body_timeout_s (408); bodies being received at once, before any
    # signature is checked, at most request_body_buffer_bytes_max bytes in all
    # (429); keep-alive connections idle longer than http_keep_alive_s closed;
    # beyond http_connections_max connections and requests at once, 503.
    http_header_bytes_max: Annotated[int, Field(ge=4096, le=1_048_576)] = 32_768
    http_header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    http_body_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    request_body_buffer_bytes_max: Annotated[int, Field(ge=1024)] = 64_000_000
    http_keep_alive_s: Annotated[int, Field(ge=1, le=300)] = 5
    http_connections_max: Annotated[int, Field(ge=16, le=1_000_000)] = 2048
    # Per calling app (channel or acquirer): sustained requests (batch items) a
    # second, and the burst it may save up; beyond them, 429 throttled.
    app_rate_per_s: Annotated[float, Field(gt=0)] = 50_000.0
    app_burst: Annotated[int, Field(ge=1)] = 100_000

    claim_batch_items_max: Annotated[int, Field(ge=1, le=10_000)] = 1000
    claim_batch_size_max: Annotated[int, Field(ge=1, le=20_000)] = 2000
    claim_batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 2.0
    claim_queue_max: Annotated[int, Field(ge=1)] = 20_000
    # How long a claim waits for room in that queue before 429 (nothing reserved yet).
    claim_queue_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 1000.0
    # Claim items (single or in batches) one process answers at once; a call finding no
    # room waits for it up to claim_inflight_wait_ms, then hears 429 overloaded.
    claim_inflight_max: Annotated[int, Field(ge=1)] = 50_000
    claim_inflight_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 1000.0
    claim_commit_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    # Writer threads of the group commit (PostgreSQL; SQLite has one, its writers
    # queue on one file lock). Each takes one campaign's claims at a time, so a
    # campaign whose rows are held locked stalls one writer, not every campaign.
    claim_writers: Annotated[int, Field(ge=1, le=32)] = 4
    # A reservation must be committed within this long after the gate granted
    # it: the group commit refuses older ones, and rolls back rather than
    # commit one that grew older meanwhile. It fences the rebuild of a lost
    # shared gate (gate_fence_s).
    claim_reservation_ttl_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    # Single claims arriving this close together are served as one batch, by at
    # most this many batches at once.
    claim_coalesce_ms: Annotated[float, Field(gt=0, le=100)] = 1.0
    claim_coalesce_workers: Annotated[int, Field(ge=1, le=64)] = 4
    # Batch claims one process carries to the claim service at once, each on a
    # thread of its own; more wait for a thread.
    claim_batch_threads_max: Annotated[int, Field(ge=1, le=1000)] = 40
    # The fair start (docs/risk.md): a window's claims wait, entered in the round's draw.
    # The draw begins draw_grace_ms after the window closes (entries on their way land
    # first) and serves draw_chunk_size entries at a time, no faster than its winners are
    # committed (at most draw_pending_max reservations of the round pending). An entered
    # claim, and a claim after the window, waits for the draw until it is draw_wait_s past
    # the window (and intake) and has not moved for as long; then 503 draw_pending. A
    # draw takes at most draw_entries_max entries and a process keeps at most
    # draw_waiting_max claims waiting; beyond, 429 overloaded.
    draw_grace_ms: Annotated[float, Field(ge=0, le=5000)] = 200.0
    draw_chunk_size: Annotated[int, Field(ge=1, le=10_000)] = 1000
    draw_pending_max: Annotated[int, Field(ge=1, le=1_000_000)] = 4000
    draw_wait_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    draw_entries_max: Annotated[int, Field(ge=1, le=50_000_000)] = 5_000_000
    draw_waiting_max: Annotated[int, Field(ge=1, le=10_000_000)] = 1_000_000
    # One-step redemptions: at most this many per transaction, waiting at most
    # this long for more; beyond redeem_queue_max waiting, 429 overloaded.
    redeem_batch_size_max: Annotated[int, Field(ge=1, le=5000)] = 500
    redeem_batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 1.0
    redeem_queue_max: Annotated[int, Field(ge=1)] = 10_000
    campaign_cache_ttl_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    # Rows the per-process caches hold before they drop the oldest.
    campaign_cache_entries_max: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    merchant_cache_entries_max: Annotated[int, Field(ge=1, le=10_000_000)] = 10_000
    app_cache_entries_max: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # App secrets read from the store at once (on a cache miss); more wait, then 429.
    app_lookups_waiting_max: Annotated[int, Field(ge=1, le=100_000)] = 256
    # Vouchers a quote considers for one person (the oldest issued first).
    quote_vouchers_max: Annotated[int, Field(ge=1, le=10_000)] = 200
    # A server process collects garbage every this many new container objects
    # (CPython's default is 700), after moving everything built at start out of
    # the collector's sight: a 1,000-claim batch makes tens of thousands of
    # short-lived objects, and full collections over the framework's heap
    # cost a quarter of a claim's time (docs/benchmarks.md).
    gc_gen0_threshold: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000

    lock_timeout_s: Annotated[int, Field(ge=10, le=86_400)] = 900
    reversal_window_s: Annotated[int, Field(ge=60, le=7 * 86_400)] = 86_400
    sweep_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    sweep_batch_max: Annotated[int, Field(ge=1, le=100_000)] = 1000

    # The central (national) platform this province talks to (docs/central.md):
    # empty central_url, no trade-in claims and no delivery of the outbox.
    province_code: Annotated[str, Field(pattern=r"^([1-9][0-9]0000)?$")] = ""
    central_url: Annotated[str, Field(max_length=200)] = ""
    central_app_id: Annotated[str, Field(max_length=64)] = ""
    central_secret: SecretStr = SecretStr("")
    # Central's OPRF public key (hex), to verify the pseudonyms it evaluates.
    central_public_key: Annotated[str, Field(max_length=200)] = ""
    central_timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # How long central holds a trade-in lock for a voucher this province has not yet
    # committed; past it the slot is free again (a crash between lock and commit).
    trade_in_hold_s: Annotated[int, Field(ge=2, le=86_400)] = 600
    # The relay that delivers the outbox to central: events per call, how long a
    # leased batch is its own, attempts before an event is dead-lettered, and the
    # backoff between attempts (doubling from the first, at most the max).
    relay_batch_max: Annotated[int, Field(ge=1, le=1000)] = 500
    relay_lease_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    relay_attempts_max: Annotated[int, Field(ge=1, le=1000)] = 60
    relay_backoff_first_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    relay_backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    relay_idle_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    # The big screen (services/screen.py): how often each process hands its live counts
    # to the shared pulse, how often a snapshot is sent, how many event streams a process
    # serves at once (in all and to one operator), how long a stream's client may take to
    # take a snapshot before the stream is closed (a stuck client holds one slot and the
    # transport's buffer, never more), and how long a screen session lasts.
    pulse_flush_s: Annotated[float, Field(ge=0.05, le=10)] = 0.25
    screen_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0
    screen_streams_max: Annotated[int, Field(ge=1, le=10_000)] = 64
    screen_streams_per_operator_max: Annotated[int, Field(ge=1, le=100)] = 4
    screen_send_timeout_s: Annotated[float, Field(gt=0, le=300)] = 30.0
    screen_session_s: Annotated[int, Field(ge=60, le=7 * 86_400)] = 12 * 3600
    # A merchant is spiking when its redemptions in the last whole minute are at least
    # this many times its mean over the half hour before, and at least the floor.
    merchant_spike_ratio: Annotated[float, Field(ge=1.5, le=1000)] = 5.0
    merchant_spike_floor: Annotated[int, Field(ge=1, le=100_000)] = 30

    # Risk control (docs/risk.md): how often each process asks the store which version
    # of the rules is active (an approval swaps the rules in within this long, without
    # a restart), and the names and members the in-process counters keep at most (the
    # embedded default; with Redis the counters' keys expire instead).
    risk_rules_poll_s: Annotated[float, Field(ge=0.05, le=300)] = 2.0
    risk_counter_entries_max: Annotated[int, Field(ge=1000, le=100_000_000)] = 8_000_000

    page_size_max: Annotated[int, Field(ge=1, le=1000)] = 200
    idempotency_key_chars_max: Annotated[int, Field(ge=8, le=128)] = 128

    # Where the worker processes of one ``lequan serve --workers N`` (N > 1) write
    # their Prometheus figures, so that /metrics answers every worker's sum
    # (prometheus-client's multiprocess mode; docs/operations.md, "Metrics"). Unset:
    # a fresh directory in the system's temporary directory, removed when serve
    # stops. Its figures files are deleted when serve starts, so a past run's
    # workers never count.
    metrics_dir: Path | None = None
    # Stock series /metrics reads from the gate per scrape (templates of the pools
    # of live and paused campaigns); past it the rest are left out, and logged.
    metrics_stock_series_max: Annotated[int, Field(ge=1, le=100_000)] = 2000

    log_json: bool | None = None  # None: JSON off a terminal, pretty on one
    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lequan.db').as_posix()}"

    @property
    def gate_fence_s(self) -> float:
        """How long after a shared gate lost a campaign no old reservation can still commit.

        The reservation ttl, plus as much again (at least 1 s) for the COMMIT
        that started just in time to reach the disk.
        """
        return self.claim_reservation_ttl_s + max(1.0, self.claim_reservation_ttl_s)

    @property
    def group_commit_writers(self) -> int:
        """Writer threads of the claims' group commit: ``claim_writers``, but one on
        SQLite, whose writers queue on one file lock (and would hold the few
        connections its readers need while they wait)."""
        return 1 if self.effective_database_url.startswith("sqlite") else self.claim_writers

    @property
    def embedded(self) -> bool:
        """The zero-setup mode: SQLite store and in-process gate, one process."""
        return self.effective_database_url.startswith("sqlite") and not self.redis_url

    @property
    def effective_key_file(self) -> Path:
        return self.key_file if self.key_file is not None else self.data_dir / "keys.json"
