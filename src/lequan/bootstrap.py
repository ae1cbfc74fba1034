"""The one place that picks adapters from settings and wires the platform.

Embedded default: SQLite file + in-process gate and nonce store, keys in a
generated local file. With ``LEQUAN_DATABASE_URL`` (PostgreSQL) and
``LEQUAN_REDIS_URL`` the same services run on the production adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog

from lequan.adapters.clock import SystemClock
from lequan.adapters.crypto import (
    AesGcmKeyRing,
    KeyRingError,
    generate_key_file,
    is_example_keyring,
    load_key_file,
)
from lequan.adapters.memory_gate import MemoryGate
from lequan.adapters.memory_pulse import MemoryPulse
from lequan.adapters.memory_risk_counters import MemoryRiskCounters
from lequan.adapters.nonces import MemoryNonceStore, RedisNonceStore
from lequan.adapters.sold_out import LocalSoldOut, RedisSoldOut
from lequan.adapters.sql import migrate
from lequan.adapters.sql.engine import create_engine, durability_settings, unsafe_durability
from lequan.adapters.sql.unit_of_work import SqlStore
from lequan.adapters.timed_gate import TimedGate
from lequan.config import Settings
from lequan.domain.errors import LequanError
from lequan.metrics import runtime_instruments
from lequan.ports import (
    ClaimGate,
    Clock,
    KeyMismatch,
    KeyRing,
    NonceStore,
    Store,
    StoreUnavailable,
)
from lequan.ports.central import CentralPlatform
from lequan.ports.pulse import Pulse
from lequan.ports.risk_counters import RiskCounters
from lequan.services.admin import AppSecrets
from lequan.services.campaigns import CampaignCache, ensure_gate_all
from lequan.services.claiming import ClaimService
from lequan.services.gatekeeper import GateKeeper
from lequan.services.idempotency import InFlight
from lequan.services.keys import check_keys
from lequan.services.live import PulseFlusher, record_sold_out
from lequan.services.redemption_batches import RedemptionWriter
from lequan.services.redemption_risk import RedemptionScreen
from lequan.services.relay import Relay
from lequan.services.risk import ClaimScreen
from lequan.services.risk_rules import RiskRulebook
from lequan.services.runtime import Runtime
from lequan.services.sweeper import Sweeper

__all__ = [
    "Platform",
    "SetupError",
    "build_runtime",
    "check_store",
    "load_keyring",
    "private_data_dir",
    "require_durable_store",
    "require_matching_keys",
    "start_platform",
]

log = structlog.get_logger(__name__)


class SetupError(LequanError):
    """The platform cannot start as configured; the message says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__("setup_error", message)


def private_data_dir(settings: Settings) -> None:
    """Make the data directory its owner's alone (0700) when lequan keeps anything in it.

    It holds the SQLite file of the embedded default and the key file made on
    first run: every person's record and the keys that open them. One made
    by an older version (0755) is narrowed here.
    """
    if settings.database_url and settings.key_file is not None:
        return  # nothing of lequan's lives there
    path = settings.data_dir
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as error:
        raise SetupError(
            f"the data directory {path} cannot be made private ({error.strerror}): "
            f"make it the lequan user's alone, chmod 700 {path}"
        ) from None


def load_keyring(settings: Settings, *, create: bool) -> AesGcmKeyRing:
    """The key ring from the key file; generated on first run only in the embedded mode."""
    private_data_dir(settings)
    path = settings.effective_key_file
    if not path.exists():
        if not (create and settings.embedded and settings.key_file is None):
            raise SetupError(
                f"no key file at {path}: outside the embedded default, provide one with "
                "LEQUAN_KEY_FILE (see docs/operations.md)"
            )
        return generate_key_file(path)
    try:
        keyring = load_key_file(path)
    except KeyRingError as error:
        raise SetupError(str(error)) from None
    if is_example_keyring(keyring) and not settings.embedded:
        raise SetupError(
            f"{path} holds the example key from the docs; generate a real one "
            "(lequan keys generate PATH)"
        )
    return keyring


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    keyring: AesGcmKeyRing | None = None,
    gate: ClaimGate | None = None,
    store: Store | None = None,
    create_keys: bool = True,
    central: CentralPlatform | None = None,
) -> Runtime:
    """Adapters from settings; tests pass fakes for the clock, keys, gate, store or
    central (``MemoryStore``: the service tests whose store is incidental)."""
    clock = clock or SystemClock()
    if central is None and settings.central_url:
        central = central_platform(settings)
    if store is None:
        private_data_dir(settings)
        store = SqlStore(
            create_engine(
                settings.effective_database_url,
                lock_timeout_ms=settings.store_lock_timeout_ms,
                statement_timeout_ms=settings.store_statement_timeout_ms,
            )
        )
    nonces: NonceStore
    if settings.redis_url:
        import redis
        from redis.cluster import RedisCluster

        from lequan.adapters.key_holds import RedisKeyHolds
        from lequan.adapters.redis_gate import RedisGate
        from lequan.adapters.redis_pulse import RedisPulse

        gate = gate or RedisGate.from_url(
            settings.redis_url,
            key_prefix=settings.redis_key_prefix,
            buckets=settings.gate_buckets,
            cluster=settings.redis_cluster,
            connections_max=settings.redis_connections_max,
            connection_wait_s=settings.redis_timeout_s,
            socket_timeout_s=settings.redis_timeout_s,
        )
        nonce_client: redis.Redis | RedisCluster
        if settings.redis_cluster:
            nonce_client = RedisCluster.from_url(
                settings.redis_url, socket_timeout=settings.redis_timeout_s
            )
        else:
            # A blocking pool: a burst waits for a connection instead of failing.
            pool = redis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_nonce_connections_max,
                timeout=settings.redis_timeout_s,
                socket_timeout=settings.redis_timeout_s,
            )
            nonce_client = redis.Redis.from_pool(pool)
        redis_nonces = RedisNonceStore(nonce_client, key_prefix=settings.redis_key_prefix)
        redis_nonces.open_epoch()
        nonces = redis_nonces
        pulse: Pulse = RedisPulse(nonce_client, key_prefix=settings.redis_key_prefix)
        # A claim's key is held for every process until the claim's outcome: at most
        # its wait for room in the commit queue and the fence later. A process that
        # dies holding keys lets go of them as long again as a caller waits after.
        inflight = InFlight(
            _keys_in_flight_max(settings),
            shared=RedisKeyHolds(nonce_client, key_prefix=settings.redis_key_prefix),
            hold_ttl_s=settings.claim_queue_wait_ms / 1000
            + settings.gate_fence_s
            + settings.claim_commit_timeout_s,
        )
    else:
        gate = gate or MemoryGate()
        nonces = MemoryNonceStore(settings.nonce_cache_entries_max, clock=clock)
        inflight = InFlight(_keys_in_flight_max(settings))
        pulse = MemoryPulse()
    metrics = runtime_instruments()
    return Runtime(
        settings=settings,
        store=store,
        gate=TimedGate(gate, metrics),
        metrics=metrics,
        keyring=keyring or load_keyring(settings, create=create_keys),
        clock=clock,
        nonces=nonces,
        pulse=pulse,
        inflight=inflight,
        central=central,
    )


def _keys_in_flight_max(settings: Settings) -> int:
    """Keys one process may hold at once: the claims it answers (their items, and as
    many again of redemptions and operators' calls) and the claims waiting for draws."""
    return 2 * settings.claim_inflight_max + settings.draw_waiting_max


def central_platform(settings: Settings) -> CentralPlatform:
    """The central platform this province talks to, over its signed HTTP API."""
    from lequan.adapters.central_http import HttpCentral

    return HttpCentral(
        base_url=settings.central_url,
        app_id=settings.central_app_id,
        secret=settings.central_secret.get_secret_value(),
        public_key=settings.central_public_key,
        timeout_s=settings.central_timeout_s,
    )


@dataclass
class Platform:
    """A running platform: the runtime plus its long-lived parts."""

    rt: Runtime
    campaigns: CampaignCache
    claims: ClaimService
    apps: AppSecrets
    sweeper: Sweeper | None
    gatekeeper: GateKeeper
    sold_out: LocalSoldOut | RedisSoldOut
    redemptions: RedemptionWriter
    relay: Relay | None = None
    pulse_flusher: PulseFlusher | None = None
    # The risk rules in force here, and the counters their features are counted in.
    risk: RiskRulebook | None = None
    risk_counters: RiskCounters | None = None
    # The redemption-time rules' step of every redemption path, and its ring sweeps, and
    # the counters its features are counted in.
    redemption_screen: RedemptionScreen | None = None
    redemption_counters: RiskCounters | None = None

    def stop_workers(self) -> None:
        """Stop the background threads; the runtime (store, gate) stays open."""
        if self.redemption_screen is not None:
            self.redemption_screen.stop()
        if self.redemption_counters is not None:
            self.redemption_counters.close()
        if self.risk is not None:
            self.risk.stop()
        if self.risk_counters is not None:
            self.risk_counters.close()
        if self.pulse_flusher is not None:
            self.pulse_flusher.stop()
        if self.relay is not None:
            self.relay.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        self.gatekeeper.stop()
        self.sold_out.close()
        self.claims.close()
        self.redemptions.close()
        self.apps.close()

    def close(self) -> None:
        self.stop_workers()
        self.rt.gate.close()
        self.rt.store.dispose()


def migrate_store(settings: Settings, *, revision: str = "head", downgrade: bool = False) -> str:
    """Move the configured store's schema to ``revision`` (up, or down); the revision now."""
    private_data_dir(settings)
    engine = create_engine(settings.effective_database_url)
    try:
        if downgrade:
            migrate.downgrade(engine, revision)
        else:
            migrate.upgrade(engine, revision)
        return migrate.current_revision(engine) or "none"
    finally:
        engine.dispose()


def generate_keys(path: Path) -> str:
    """Write a new key file (mode 0600), refusing to overwrite one; its active key id."""
    return generate_key_file(path).active_key_id


def require_current_schema(rt: Runtime) -> None:
    """Refuse a store whose schema is not the one this version needs, with the fix."""
    _require_schema(rt.store)


def _require_schema(store: Store) -> None:
    current, head = store.schema_revisions()
    if current != head:
        raise SetupError(
            f"the store is at schema {current or 'none'}, this version needs {head}: "
            "run `lequan migrate`"
        )


def require_durable_store(settings: Settings, store: Store | None = None) -> None:
    """Refuse a PostgreSQL store whose settings let a COMMIT return before it is safe
    (``unsafe_durability`` says which and why), unless the settings allow it, and
    then say so loudly: an issued answer must mean a committed voucher.

    ``store``: the running store; None asks the one the settings name, on a
    connection of its own (``serve``, before it starts any worker).
    """
    if store is None:
        if settings.effective_database_url.startswith("sqlite"):
            return  # lequan sets synchronous=FULL on every connection itself
        engine = create_engine(settings.effective_database_url, pool_size=1)
        try:
            found = durability_settings(engine)
        finally:
            engine.dispose()
    elif isinstance(store, SqlStore):
        found = durability_settings(store.engine)
    else:  # a store of another kind keeps its own promises
        return
    problems = unsafe_durability(found)
    if not problems:
        return
    if settings.allow_unsafe_durability:
        log.critical(
            "durability_unsafe_allowed",
            problems=problems,
            setting="LEQUAN_ALLOW_UNSAFE_DURABILITY",
        )
        return
    raise SetupError(
        "the database may lose claims it has acknowledged: "
        + "; ".join(problems)
        + ". Fix its settings (docs/operations.md), or set "
        "LEQUAN_ALLOW_UNSAFE_DURABILITY=true for a throwaway database"
    )


def require_matching_keys(rt: Runtime) -> None:
    """Refuse a key ring that is not the one the store's data is written under, with the
    fix; on a store that has none yet, pin this one (``lequan.services.keys``)."""
    _require_keys(rt.store, rt.keyring, rt.settings, now=rt.clock.now())


def _require_keys(store: Store, keyring: KeyRing, settings: Settings, *, now: datetime) -> None:
    try:
        check_keys(store, keyring, now=now)
    except KeyMismatch as error:
        raise SetupError(
            f"the key file {settings.effective_key_file} does not match the store's data: "
            f"{error.message}; start with the key file the data was written with "
            "(docs/operations.md, Keys)"
        ) from None


def check_store(settings: Settings, keyring: AesGcmKeyRing) -> None:
    """What ``serve`` makes sure of before it starts a worker: the store's schema is
    current and the key ring is the one its data is written under."""
    store = SqlStore(create_engine(settings.effective_database_url, pool_size=1))
    try:
        _require_schema(store)
        _require_keys(store, keyring, settings, now=SystemClock().now())
    except StoreUnavailable as error:
        raise SetupError(f"the store does not answer ({error}): start it first") from None
    finally:
        store.dispose()


def start_platform(
    rt: Runtime, *, sweep: bool = True, check_schema: bool = True, relay: bool = True
) -> Platform:
    """Check the schema is current, the keys the data's and the store durable, rebuild
    the gate from the store (what must wait out a fence, in the background), start the
    workers."""
    if check_schema:
        require_current_schema(rt)
    require_matching_keys(rt)
    require_durable_store(rt.settings, rt.store)
    cache = CampaignCache(
        rt,
        ttl_s=rt.settings.campaign_cache_ttl_s,
        entries_max=rt.settings.campaign_cache_entries_max,
    )
    gatekeeper = GateKeeper(rt, interval_s=rt.settings.claim_reservation_ttl_s)
    # What must wait out a fence is loaded by the keeper: the process listens meanwhile.
    ensure_gate_all(rt, later=gatekeeper.load_later)
    sweeper = Sweeper(rt) if sweep else None
    if sweeper is not None:
        sweeper.start()
    gatekeeper.start()
    sold_out = sold_out_board(rt.settings)
    sold_out.listen(lambda pool, template_id: cache.sold_out.add((pool, template_id)))

    def sold_out_now(pool: str, template_id: str) -> None:
        record_sold_out(rt.pulse, rt.clock.now(), pool, template_id)
        sold_out.publish(pool, template_id)

    # The rules in force from the first claim on, then kept in step with the store.
    rulebook = RiskRulebook.of(rt, rt.settings)
    rulebook.refresh()
    rulebook.start()
    counters = risk_counters(rt.settings)
    claims = ClaimService(
        rt,
        cache,
        on_gate_lost=gatekeeper.request,
        on_sold_out=sold_out_now,
        screen=ClaimScreen(rt, rulebook, counters),
    )
    # Counters of their own: a flood of claims filling the in-memory bound must not
    # leave the redemptions' features unknown for the rest of the day.
    redemption_counters = risk_counters(rt.settings)
    redemption_screen = RedemptionScreen(rt, rulebook, redemption_counters)
    redemption_screen.start()
    flusher = PulseFlusher(rt.pulse, interval_s=rt.settings.pulse_flush_s)
    if rt.pulse.shared:
        flusher.start()
    # Every process relays: leases keep two relays off one event.
    relayer = Relay(rt, rt.central) if relay and rt.central is not None else None
    if relayer is not None:
        relayer.start()
    return Platform(
        risk=rulebook,
        risk_counters=counters,
        redemption_screen=redemption_screen,
        redemption_counters=redemption_counters,
        relay=relayer,
        pulse_flusher=flusher if rt.pulse.shared else None,
        rt=rt,
        campaigns=cache,
        claims=claims,
        apps=AppSecrets(
            rt,
            entries_max=rt.settings.app_cache_entries_max,
            lookups_waiting_max=rt.settings.app_lookups_waiting_max,
        ),
        sweeper=sweeper,
        gatekeeper=gatekeeper,
        sold_out=sold_out,
        redemptions=RedemptionWriter(
            rt,
            batch_size_max=rt.settings.redeem_batch_size_max,
            wait_ms=rt.settings.redeem_batch_wait_ms,
            queue_max=rt.settings.redeem_queue_max,
            screen=redemption_screen,
        ),
    )


def risk_counters(settings: Settings) -> RiskCounters:
    """Where the risk rules count claims: Redis when every process shares it (names
    spread over 16 hash slots on a cluster), else this process's bounded memory."""
    if not settings.redis_url:
        return MemoryRiskCounters(entries_max=settings.risk_counter_entries_max)
    import redis
    from redis.cluster import RedisCluster

    from lequan.adapters.redis_risk_counters import RedisRiskCounters

    client: redis.Redis | RedisCluster
    if settings.redis_cluster:
        client = RedisCluster.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s)
    else:
        # A blocking pool, as the gate's: a burst of batches waits for a connection.
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_connections_max,
            timeout=settings.redis_timeout_s,
            socket_timeout=settings.redis_timeout_s,
        )
        client = redis.Redis.from_pool(pool)
    return RedisRiskCounters(
        client, key_prefix=settings.redis_key_prefix, shards=16 if settings.redis_cluster else 1
    )


def sold_out_board(settings: Settings) -> LocalSoldOut | RedisSoldOut:
    """How sold-out flags reach the other API processes: over Redis when it is there."""
    if not settings.redis_url:
        return LocalSoldOut()
    import redis
    from redis.cluster import RedisCluster

    client: redis.Redis | RedisCluster
    if settings.redis_cluster:
        client = RedisCluster.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s)
    else:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.redis_timeout_s)
    return RedisSoldOut(client, channel=f"{settings.redis_key_prefix}sold-out")
