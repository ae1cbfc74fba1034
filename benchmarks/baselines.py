"""The baselines every lequan figure is compared with, measured in the same run.

- the naive PostgreSQL hot-row claim: ``UPDATE … SET remaining = remaining - 1
  WHERE remaining > 0`` and a unique insert, one claim per transaction, from
  ``clients`` threads — what most open-source flash sales do;
- the raw Redis Lua ceiling: one tiny claim script (de-dup + decrement),
  pipelined from this process — the fastest the gate could possibly go here;
- bare HTTP endpoints on the same server: a plain ASGI app and a FastAPI
  route with a Pydantic body, to show the framework's own cost.
"""

from __future__ import annotations

import threading
import time
import uuid

import redis
import sqlalchemy as sa

__all__ = ["BARE_APPS", "pg_hot_row", "redis_lua_ceiling"]

HOT_ROW_SCHEMA = """
CREATE TABLE {s}.stock (id int PRIMARY KEY, remaining int NOT NULL CHECK (remaining >= 0));
CREATE TABLE {s}.claims (person_id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
INSERT INTO {s}.stock VALUES (1, {stock});
"""


def pg_hot_row(url: str, *, clients: int, duration_s: float, stock: int = 10_000_000) -> float:
    """Claims per second of the naive design; every claim its own transaction."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url, pool_size=clients, max_overflow=0)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
        for statement in HOT_ROW_SCHEMA.format(s=schema, stock=stock).strip().split(";\n"):
            connection.exec_driver_sql(statement.rstrip(";"))
    counts = [0] * clients
    deadline = time.perf_counter() + duration_s

    # The schema name is ours (a random hex suffix), not input.
    take = f"UPDATE {schema}.stock SET remaining = remaining - 1 WHERE id = 1 AND remaining > 0"  # noqa: S608
    record = f"INSERT INTO {schema}.claims (person_id) VALUES (%(p)s)"  # noqa: S608

    def client(n: int) -> None:
        with engine.connect() as connection:
            i = 0
            while time.perf_counter() < deadline:
                with connection.begin():
                    if connection.exec_driver_sql(take).rowcount:
                        connection.exec_driver_sql(record, {"p": f"{n}-{i}"})
                counts[n] += 1
                i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed_s = time.perf_counter() - started
    with engine.begin() as connection:
        connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()
    return sum(counts) / elapsed_s


CLAIM_LUA = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 2 end
if redis.call('DECR', KEYS[1]) < 0 then
  redis.call('INCR', KEYS[1]); redis.call('SREM', KEYS[2], ARGV[1]); return 1
end
return 0
"""


def redis_lua_ceiling(url: str, *, duration_s: float, pipeline_depth: int = 500) -> float:
    """Claims per second of one minimal Lua claim per person, pipelined."""
    client = redis.Redis.from_url(url)
    prefix = f"lqbench:{uuid.uuid4().hex[:8]}:"
    stock_key, claimed_key = prefix + "{x}:stock", prefix + "{x}:claimed"
    client.set(stock_key, 10**9)
    script = client.register_script(CLAIM_LUA)
    n = 0
    started = time.perf_counter()
    deadline = started + duration_s
    while time.perf_counter() < deadline:
        pipe = client.pipeline(transaction=False)
        for _ in range(pipeline_depth):
            script(keys=[stock_key, claimed_key], args=[n], client=pipe)
            n += 1
        pipe.execute()
    elapsed_s = time.perf_counter() - started
    client.delete(stock_key, claimed_key)
    client.close()
    return n / elapsed_s


BARE_APPS = """
import json
from fastapi import FastAPI
from pydantic import BaseModel

async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"19")]})
    await send({"type": "http.response.body", "body": b'{"status":"issued"}'})

fastapi_app = FastAPI()

class Claim(BaseModel):
    channel_user_id: str
    campaign_id: str
    round_id: str
    template_id: str
    location_region: str | None = None

@fastapi_app.post("/v1/claims", status_code=201)
async def claim(body: Claim) -> dict[str, str]:
    return {"status": "issued"}
"""
