//! [`RedisCounters`]: the [`Counters`] shared by every replica through one Redis server.
//!
//! Every check-and-charge is one Lua script, so it is atomic however many replicas call at
//! once, and is timed by Redis's own clock (`TIME`), so replicas with skewed clocks still
//! share one window. Keys are `<prefix><kind>:{<key id>}:…`: the braces make every
//! structure of one key hash to the same Redis Cluster slot.
//!
//! Failure handling is built for a gateway that falls back to local limits: each call is
//! bounded by `op_timeout_ms`; after a transport failure the connection is dropped and
//! calls fail at once with [`CounterError::Unavailable`] for `retry_interval_ms`, then one
//! call probes with a fresh connection. No call ever waits on a reconnect loop.

use crate::counters::Tally;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script, ServerErrorKind};
use async_trait::async_trait;
use futures_util::StreamExt;
use stormwall_types::KeyId;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::admission::{BUDGET_DAY_TTL, BUDGET_MONTH_TTL};
use crate::config::{DEFAULT_REDIS_URL_ENV, RedisConfig, resolve_url};
use crate::counters::{
    BudgetDecision, BudgetPeriod, BudgetRequest, BudgetReservation, BudgetUsage, CounterError,
    Counters, CountersHealth, DISTINCT_RETENTION, Handle, KeyChange, KeyChanges, Origin,
    RATE_BUCKET, RATE_WINDOW, RateCharge, RateDecision, RateLimited, RateRequest, SlotDecision,
    SlotLease, WindowState, budget_nanos, from_millis, hour_span, millis, nanos_to_usd,
    new_handle_id, periods, usd_to_nanos, usd_to_nanos_ceil, validate_set,
};
use crate::local::CHANGES_CAPACITY;

/// Longest key prefix.
const MAX_PREFIX: usize = 64;
/// How often an idle subscription pings Redis, so a dead connection is noticed.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);

/// The current time in ms from Redis's clock, and helpers every script shares.
const LUA_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Integers are passed to Redis as decimal strings: Lua numbers may be formatted with an
-- exponent, which HINCRBY and field names must never see.
local function int(x) return string.format('%d', x) end
local function num(x) if x then return tonumber(x) or 0 end return 0 end
";

/// Check and charge the requests and tokens windows of one key.
/// KEYS: requests hash, tokens hash (field: bucket start ms, value: units).
/// ARGV: rpm or '', tpm or '', tokens, window ms, bucket ms.
/// Returns {status (0 granted, 1 requests full, 2 tokens full), bucket, requests used,
/// requests reset ms, tokens used, tokens reset ms, retry ms}.
const RATE_LUA: &str = r"
local window = tonumber(ARGV[4])
local bucket = tonumber(ARGV[5])
local span = window + bucket
local cur = now - (now % bucket)
-- A bucket starting at b counts while now < b + span: no unit leaves the window before it
-- is a full window old, so N per window is never exceeded.
local function load(key)
  local flat = redis.call('HGETALL', key)
  local used, list, stale = 0, {}, {}
  for i = 1, #flat, 2 do
    local b = tonumber(flat[i])
    local n = tonumber(flat[i + 1])
    if b == nil or n == nil or b <= now - span then
      stale[#stale + 1] = flat[i]
    elseif n > 0 then
      used = used + n
      list[#list + 1] = {b, n}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  table.sort(list, function(x, y) return x[1] < y[1] end)
  return used, list
end
local function reset(list)
  if #list == 0 then return 0 end
  return list[1][1] + span - now
end
local function wait(used, list, limit, need)
  if need > limit then return span end
  local freed = 0
  for _, e in ipairs(list) do
    freed = freed + e[2]
    if used - freed + need <= limit then return e[1] + span - now end
  end
  return span
end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local r_used, r_list, t_used, t_list = 0, {}, 0, {}
if rpm then r_used, r_list = load(KEYS[1]) end
if tpm then t_used, t_list = load(KEYS[2]) end
if rpm and r_used + 1 > rpm then
  return {1, cur, r_used, reset(r_list), t_used, reset(t_list), wait(r_used, r_list, rpm, 1)}
end
if tpm and t_used + tokens > tpm then
  return {2, cur, r_used, reset(r_list), t_used, reset(t_list), wait(t_used, t_list, tpm, tokens)}
end
local ttl = int(span + bucket)
if rpm then
  redis.call('HINCRBY', KEYS[1], int(cur), 1)
  redis.call('PEXPIRE', KEYS[1], ttl)
  r_used = r_used + 1
  r_list[#r_list + 1] = {cur, 1}
end
if tpm and tokens > 0 then
  redis.call('HINCRBY', KEYS[2], int(cur), int(tokens))
  redis.call('PEXPIRE', KEYS[2], ttl)
  t_used = t_used + tokens
  t_list[#t_list + 1] = {cur, tokens}
end
return {0, cur, r_used, reset(r_list), t_used, reset(t_list), 0}
";

/// Replace a token estimate with the real count.
/// KEYS: tokens hash. ARGV: charged bucket, charged tokens, actual tokens, window ms, bucket ms.
const RECONCILE_LUA: &str = r"
local window = tonumber(ARGV[4])
local bucket = tonumber(ARGV[5])
local span = window + bucket
local cur = now - (now % bucket)
local charged_at = tonumber(ARGV[1])
local charged = tonumber(ARGV[2])
local actual = tonumber(ARGV[3])
if actual > charged then
  redis.call('HINCRBY', KEYS[1], int(cur), int(actual - charged))
  redis.call('PEXPIRE', KEYS[1], int(span + bucket))
elseif actual < charged and charged_at > now - span then
  local field = int(charged_at)
  local left = num(redis.call('HGET', KEYS[1], field)) - (charged - actual)
  if left > 0 then
    redis.call('HSET', KEYS[1], field, int(left))
  else
    redis.call('HDEL', KEYS[1], field)
  end
end
return 1
";

/// Take a concurrency slot. KEYS: slots zset (member: slot id, score: lease end ms).
/// ARGV: max, lease ms, slot id. Returns {granted (0/1), in flight}.
const ACQUIRE_LUA: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return {0, n} end
redis.call('ZADD', KEYS[1], int(now + tonumber(ARGV[2])), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return {1, n + 1}
";

/// Extend a slot's lease. KEYS: slots zset. ARGV: slot id, lease ms. Returns 1 if renewed.
const RENEW_LUA: &str = r"
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return 0 end
if tonumber(score) <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', int(now + tonumber(ARGV[2])), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
";

/// Count live slots. KEYS: slots zset.
const INFLIGHT_LUA: &str = r"
return redis.call('ZCOUNT', KEYS[1], '(' .. int(now), '+inf')
";

/// Releases expired reservations of KEYS[3] held in the periods of KEYS[1] (day ARGV_DAY)
/// and KEYS[2] (month ARGV_MONTH). Members are 'id|nano-usd|day|month'.
const EXPIRE_RESERVATIONS_LUA: &str = r"
local function release(hash, amount)
  if redis.call('EXISTS', hash) == 0 then return end
  local left = redis.call('HINCRBY', hash, 'reserved', -amount)
  if left < 0 then redis.call('HSET', hash, 'reserved', 0) end
end
local function expire_reservations(day, month)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', int(now))
  for _, m in ipairs(expired) do
    local _, amount, d, mo = string.match(m, '^([^|]*)|(%d+)|(%d+)|(%d+)$')
    if amount then
      if d == day then release(KEYS[1], tonumber(amount)) end
      if mo == month then release(KEYS[2], tonumber(amount)) end
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', int(now)) end
end
";

/// Reserve against the day and month budgets.
/// KEYS: day totals hash, month totals hash, reservations zset (score: lease end ms).
/// ARGV: day budget or '', month budget or '', amount, member, lease ms, day, month,
/// day ttl ms, month ttl ms (amounts in nano-USD).
/// Returns {granted (0/1), refusing period (1 day, 2 month), day spent, day reserved,
/// month spent, month reserved} (before this reservation).
const RESERVE_LUA: &str = r"
expire_reservations(ARGV[6], ARGV[7])
local d_budget = tonumber(ARGV[1])
local m_budget = tonumber(ARGV[2])
local amount = tonumber(ARGV[3])
local ds = num(redis.call('HGET', KEYS[1], 'spent'))
local dr = num(redis.call('HGET', KEYS[1], 'reserved'))
local ms = num(redis.call('HGET', KEYS[2], 'spent'))
local mr = num(redis.call('HGET', KEYS[2], 'reserved'))
local function over(spent, reserved, budget)
  return budget and (spent >= budget or spent + reserved + amount > budget)
end
if over(ds, dr, d_budget) then return {0, 1, ds, dr, ms, mr} end
if over(ms, mr, m_budget) then return {0, 2, ds, dr, ms, mr} end
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', int(amount))
  redis.call('PEXPIRE', KEYS[1], ARGV[8])
  redis.call('HINCRBY', KEYS[2], 'reserved', int(amount))
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
  redis.call('ZADD', KEYS[3], int(now + tonumber(ARGV[5])), ARGV[4])
  -- Outlive the totals: an expired reservation must still be found (and released) by the
  -- next call, however late it comes.
  local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[3], int(tonumber(last[2]) + tonumber(ARGV[9])))
end
return {1, 0, ds, dr, ms, mr}
";

/// Release a reservation (if still held) and record a cost.
/// KEYS: reservation's day hash, reservation's month hash, reservations zset, current day
/// hash, current month hash. ARGV: member or '', amount, cost, day ttl ms, month ttl ms.
const SETTLE_LUA: &str = r"
if ARGV[1] ~= '' and redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  local amount = tonumber(ARGV[2])
  for _, hash in ipairs({KEYS[1], KEYS[2]}) do
    if redis.call('EXISTS', hash) == 1 then
      local left = redis.call('HINCRBY', hash, 'reserved', -amount)
      if left < 0 then redis.call('HSET', hash, 'reserved', 0) end
    end
  end
end
local cost = tonumber(ARGV[3])
if cost > 0 then
  redis.call('HINCRBY', KEYS[4], 'spent', int(cost))
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
  redis.call('HINCRBY', KEYS[5], 'spent', int(cost))
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
return 1
";

/// Read day and month totals, releasing expired reservations first.
/// KEYS: day hash, month hash, reservations zset. ARGV: day, month.
const USAGE_LUA: &str = r"
expire_reservations(ARGV[1], ARGV[2])
return {num(redis.call('HGET', KEYS[1], 'spent')), num(redis.call('HGET', KEYS[1], 'reserved')),
        num(redis.call('HGET', KEYS[2], 'spent')), num(redis.call('HGET', KEYS[2], 'reserved'))}
";

/// Raise spent to at least the given totals. KEYS: day hash, month hash.
/// ARGV: day spent, month spent, day ttl ms, month ttl ms.
const RECONCILE_SPEND_LUA: &str = r"
for i, hash in ipairs({KEYS[1], KEYS[2]}) do
  local want = tonumber(ARGV[i])
  if want > num(redis.call('HGET', hash, 'spent')) then
    redis.call('HSET', hash, 'spent', int(want))
  end
  if redis.call('EXISTS', hash) == 1 then redis.call('PEXPIRE', hash, ARGV[i + 2]) end
end
return 1
";

/// The scripts, compiled once (each is sent by SHA, and re-sent whole after a Redis restart
/// has emptied its script cache).
struct Scripts {
    rate: Script,
    reconcile: Script,
    acquire: Script,
    renew: Script,
    inflight: Script,
    reserve: Script,
    settle: Script,
    usage: Script,
    reconcile_spend: Script,
}

impl Scripts {
    fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{LUA_PRELUDE}{body}"));
        let budget =
            |body: &str| Script::new(&format!("{LUA_PRELUDE}{EXPIRE_RESERVATIONS_LUA}{body}"));
        Self {
            rate: with(RATE_LUA),
            reconcile: with(RECONCILE_LUA),
            acquire: with(ACQUIRE_LUA),
            renew: with(RENEW_LUA),
            inflight: with(INFLIGHT_LUA),
            reserve: budget(RESERVE_LUA),
            settle: with(SETTLE_LUA),
            usage: budget(USAGE_LUA),
            reconcile_spend: with(RECONCILE_SPEND_LUA),
        }
    }
}

/// Counters in a shared Redis. Cheap to share behind an `Arc`; dropping it stops the
/// key-change subscription task.
pub struct RedisCounters {
    client: Client,
    connection_config: AsyncConnectionConfig,
    /// The live connection; `None` after a transport failure until the next probe.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Serializes reconnects, so a probe opens one connection, not one per caller.
    connecting: tokio::sync::Mutex<()>,
    scripts: Scripts,
    prefix: String,
    op_timeout: Duration,
    connect_timeout: Duration,
    retry_interval_ms: i64,
    window_ms: i64,
    bucket_ms: i64,
    health: Arc<Health>,
    changes: broadcast::Sender<KeyChange>,
    subscriber: Mutex<Option<Subscriber>>,
}

struct Subscriber {
    task: JoinHandle<()>,
    subscribed: watch::Receiver<bool>,
}

impl std::fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client holds the connection info, which may include a password.
        f.debug_struct("RedisCounters")
            .field("prefix", &self.prefix)
            .field("available", &self.health.available.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for RedisCounters {
    fn drop(&mut self) {
        let subscriber = self
            .subscriber
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = subscriber.take() {
            s.task.abort();
        }
    }
}

/// Availability bookkeeping shared with the subscription task.
#[derive(Debug)]
struct Health {
    origin: Instant,
    available: AtomicBool,
    failures: AtomicU64,
    /// While now (ms since `origin`) is before this, calls fail fast; 0 means up.
    down_until: AtomicI64,
}

impl Health {
    fn now_ms(&self) -> i64 {
        millis(self.origin.elapsed(), 0)
    }
}

impl RedisCounters {
    /// Counters on the server `config` names (reading its URL variable through `env`).
    /// Does not connect: the first call does, so a replica can start while Redis is down.
    pub fn new(
        config: &RedisConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CounterError> {
        let url = resolve_url(
            config.url.as_ref(),
            config.url_env.as_deref(),
            DEFAULT_REDIS_URL_ENV,
            env,
        )
        .map_err(CounterError::Config)?;
        validate_prefix(&config.prefix)?;
        // The parser's messages can quote the URL, which may hold a password.
        let client = Client::open(url.as_str())
            .map_err(|_| CounterError::Config("the Redis URL is not valid".to_owned()))?;
        let op_timeout = Duration::from_millis(config.op_timeout_ms.max(1));
        let connect_timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Ok(Self {
            client,
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(op_timeout)),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            scripts: Scripts::new(),
            prefix: config.prefix.clone(),
            op_timeout,
            connect_timeout,
            retry_interval_ms: i64::try_from(config.retry_interval_ms).unwrap_or(i64::MAX),
            window_ms: millis(RATE_WINDOW, 1),
            bucket_ms: millis(RATE_BUCKET, 1),
            health: Arc::new(Health {
                origin: Instant::now(),
                available: AtomicBool::new(true),
                failures: AtomicU64::new(0),
                down_until: AtomicI64::new(0),
            }),
            changes,
            subscriber: Mutex::new(None),
        })
    }

    /// [`RedisCounters::new`], then a `PING`: fails if the server does not answer.
    pub async fn connect(
        config: &RedisConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, CounterError> {
        let counters = Self::new(config, env)?;
        counters.ping().await?;
        Ok(counters)
    }

    /// Rate windows of `window` in buckets of `bucket` instead of one minute in seconds
    /// (tests watch usage slide out of short windows). Every replica must use the same.
    pub fn with_rate_window(mut self, window: Duration, bucket: Duration) -> Self {
        self.window_ms = millis(window, 1);
        self.bucket_ms = millis(bucket, 1);
        self
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<(), CounterError> {
        self.call(async |mut conn| {
            ::redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    fn key(&self, kind: &str, key: &KeyId, suffix: &str) -> String {
        format!("{}{kind}:{{{}}}{suffix}", self.prefix, key.as_str())
    }

    fn channel(&self) -> String {
        format!("{}key-changes", self.prefix)
    }

    /// Fails fast while Redis is marked down; lets one caller through per retry interval.
    fn gate(&self) -> Result<(), CounterError> {
        let until = self.health.down_until.load(Ordering::Acquire);
        if until == 0 {
            return Ok(());
        }
        let now = self.health.now_ms();
        if now >= until
            && self
                .health
                .down_until
                .compare_exchange(
                    until,
                    now.saturating_add(self.retry_interval_ms),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Ok(()); // this caller probes
        }
        Err(CounterError::Unavailable(
            "Redis is marked down; retrying shortly".to_owned(),
        ))
    }

    fn mark_up(&self) {
        if self.health.down_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("Redis counters available again");
        }
        self.health.available.store(true, Ordering::Relaxed);
    }

    fn mark_down(&self, why: &str) {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        self.health.available.store(false, Ordering::Relaxed);
        let until = self
            .health
            .now_ms()
            .saturating_add(self.retry_interval_ms)
            .max(1);
        if self.health.down_until.swap(until, Ordering::AcqRel) == 0 {
            tracing::warn!(
                error = why,
                "Redis counters unavailable; failing fast until it answers"
            );
        }
        let mut conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *conn = None;
    }

    async fn connection(&self) -> Result<MultiplexedConnection, CounterError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let connecting = self
            .client
            .get_multiplexed_async_connection_with_config(&self.connection_config);
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(CounterError::Unavailable(describe(&e))),
            Err(_) => {
                return Err(CounterError::Unavailable(
                    "timed out connecting to Redis".to_owned(),
                ));
            }
        };
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn current(&self) -> Option<MultiplexedConnection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs one operation on the connection within the op timeout, keeping health current.
    async fn call<T, F>(&self, op: F) -> Result<T, CounterError>
    where
        F: AsyncFnOnce(MultiplexedConnection) -> Result<T, RedisError>,
    {
        self.gate()?;
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await.map_err(classify)
        };
        let result =
            match tokio::time::timeout(self.op_timeout + self.connect_timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(CounterError::Unavailable(
                    "Redis did not answer in time".to_owned(),
                )),
            };
        match &result {
            Ok(_) => self.mark_up(),
            Err(CounterError::Unavailable(why)) => self.mark_down(why),
            Err(_) => {}
        }
        result
    }

    fn ensure_subscriber(&self) -> watch::Receiver<bool> {
        let mut guard = self
            .subscriber
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = guard.as_ref()
            && !s.task.is_finished()
        {
            return s.subscribed.clone();
        }
        let (tx, rx) = watch::channel(false);
        let task = SubscriptionTask {
            client: self.client.clone(),
            channel: self.channel(),
            changes: self.changes.clone(),
            subscribed: tx,
            connect_timeout: self.connect_timeout,
            op_timeout: self.op_timeout,
            retry: Duration::from_millis(u64::try_from(self.retry_interval_ms).unwrap_or(1_000))
                .max(Duration::from_millis(50)),
        };
        // One long-lived task per RedisCounters, aborted when it is dropped: not a detached
        // request-path spawn.
        #[allow(clippy::disallowed_methods)]
        let handle = tokio::spawn(task.run());
        *guard = Some(Subscriber {
            task: handle,
            subscribed: rx.clone(),
        });
        rx
    }

    fn budget_keys(&self, key: &KeyId, day: u32, month: u32) -> [String; 3] {
        [
            self.key("bud", key, &format!(":d:{day}")),
            self.key("bud", key, &format!(":m:{month}")),
            self.key("bud", key, ":res"),
        ]
    }
}

fn validate_prefix(p: &str) -> Result<(), CounterError> {
    let ok = p.len() <= MAX_PREFIX
        && p.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err(CounterError::Config(format!(
            "prefix must be at most {MAX_PREFIX} printable ASCII characters without spaces or braces"
        )))
    }
}

/// A Redis error as text. The client's messages describe the failure kind and the server's
/// reply; they never include the connection URL.
fn describe(e: &RedisError) -> String {
    e.to_string()
}

/// Transport trouble, and a server that cannot serve yet (loading its data after a
/// restart, a replica that lost its primary, a read-only replica after a failover), mean
/// "unavailable": fall back. Anything else is a reply error.
fn classify(e: RedisError) -> CounterError {
    let not_serving = matches!(
        e.kind(),
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        )
    );
    if not_serving
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        CounterError::Unavailable(describe(&e))
    } else {
        CounterError::Backend(describe(&e))
    }
}

fn reply_err(what: &str) -> CounterError {
    CounterError::Backend(format!("unexpected reply to {what}"))
}

fn opt_arg<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl Counters for RedisCounters {
    async fn check_rate(
        &self,
        key: &KeyId,
        req: RateRequest,
    ) -> Result<RateDecision, CounterError> {
        let keys = [self.key("rl", key, ":r"), self.key("rl", key, ":t")];
        let (window, bucket) = (self.window_ms, self.bucket_ms);
        let reply: Vec<i64> = self
            .call(async |mut conn| {
                self.scripts
                    .rate
                    .key(&keys[0])
                    .key(&keys[1])
                    .arg(opt_arg(req.rpm))
                    .arg(opt_arg(req.tpm))
                    .arg(req.tokens)
                    .arg(window)
                    .arg(bucket)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let [status, cur, r_used, r_reset, t_used, t_reset, retry] = reply[..] else {
            return Err(reply_err("the rate script"));
        };
        let requests = req.rpm.map(|l| WindowState {
            limit: u64::from(l),
            used: to_u64(r_used),
            reset_after: from_millis(r_reset),
        });
        let tokens = req.tpm.map(|l| WindowState {
            limit: l,
            used: to_u64(t_used),
            reset_after: from_millis(t_reset),
        });
        Ok(match status {
            0 => RateDecision::Granted {
                charge: RateCharge {
                    origin: Origin::Redis,
                    bucket_ms: cur,
                    tokens: req.tokens,
                    tokens_tracked: req.tpm.is_some(),
                },
                requests,
                tokens,
            },
            1 | 2 => RateDecision::Denied {
                limit: if status == 1 {
                    RateLimited::Requests
                } else {
                    RateLimited::Tokens
                },
                retry_after: from_millis(retry),
                requests,
                tokens,
            },
            _ => return Err(reply_err("the rate script")),
        })
    }

    async fn reconcile_tokens(
        &self,
        key: &KeyId,
        charge: &RateCharge,
        actual_tokens: u64,
    ) -> Result<(), CounterError> {
        if !charge.tokens_tracked || actual_tokens == charge.tokens {
            return Ok(());
        }
        let tokens_key = self.key("rl", key, ":t");
        let (window, bucket) = (self.window_ms, self.bucket_ms);
        self.call(async |mut conn| {
            self.scripts
                .reconcile
                .key(&tokens_key)
                .arg(charge.bucket_ms)
                .arg(charge.tokens)
                .arg(actual_tokens)
                .arg(window)
                .arg(bucket)
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn acquire_slot(
        &self,
        key: &KeyId,
        max: u32,
        lease: Duration,
    ) -> Result<SlotDecision, CounterError> {
        let slots = self.key("cc", key, "");
        let id = new_handle_id();
        let reply: Vec<i64> = self
            .call(async |mut conn| {
                self.scripts
                    .acquire
                    .key(&slots)
                    .arg(max)
                    .arg(millis(lease, 1))
                    .arg(&id)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let [granted, inflight] = reply[..] else {
            return Err(reply_err("the slot script"));
        };
        let inflight = u32::try_from(inflight).unwrap_or(u32::MAX);
        Ok(if granted == 1 {
            SlotDecision::Granted(SlotLease {
                id: Handle::Redis(id),
                inflight,
            })
        } else {
            SlotDecision::Denied { inflight }
        })
    }

    async fn renew_slot(
        &self,
        key: &KeyId,
        slot: &SlotLease,
        lease: Duration,
    ) -> Result<bool, CounterError> {
        let slots = self.key("cc", key, "");
        let renewed: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .renew
                    .key(&slots)
                    .arg(slot.id.redis_member())
                    .arg(millis(lease, 1))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(renewed == 1)
    }

    async fn release_slot(&self, key: &KeyId, slot: SlotLease) -> Result<(), CounterError> {
        let slots = self.key("cc", key, "");
        self.call(async |mut conn| {
            ::redis::cmd("ZREM")
                .arg(&slots)
                .arg(slot.id.redis_member())
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn inflight(&self, key: &KeyId) -> Result<u32, CounterError> {
        let slots = self.key("cc", key, "");
        let n: i64 = self
            .call(async |mut conn| {
                self.scripts
                    .inflight
                    .key(&slots)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn reserve_budget(
        &self,
        key: &KeyId,
        req: BudgetRequest,
        at: OffsetDateTime,
    ) -> Result<BudgetDecision, CounterError> {
        let (day, month) = periods(at);
        let keys = self.budget_keys(key, day, month);
        let amount = usd_to_nanos_ceil(req.reserve_usd);
        let id = new_handle_id();
        let member = format!("{id}|{amount}|{day}|{month}");
        let reply: Vec<i64> = self
            .call(async |mut conn| {
                self.scripts
                    .reserve
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(opt_arg(budget_nanos(req.daily_usd)))
                    .arg(opt_arg(budget_nanos(req.monthly_usd)))
                    .arg(amount)
                    .arg(&member)
                    .arg(millis(req.lease, 1))
                    .arg(day)
                    .arg(month)
                    .arg(millis(BUDGET_DAY_TTL, 1))
                    .arg(millis(BUDGET_MONTH_TTL, 1))
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let [granted, period, ds, dr, ms, mr] = reply[..] else {
            return Err(reply_err("the reserve script"));
        };
        if granted == 1 {
            return Ok(BudgetDecision::Granted(BudgetReservation {
                // The whole member names the reservation in the zset.
                id: Handle::Redis(member),
                nanos: amount,
                day,
                month,
            }));
        }
        Ok(BudgetDecision::Denied {
            period: if period == 1 {
                BudgetPeriod::Day
            } else {
                BudgetPeriod::Month
            },
            usage: BudgetUsage {
                day_spent_usd: nanos_to_usd(ds),
                day_reserved_usd: nanos_to_usd(dr),
                month_spent_usd: nanos_to_usd(ms),
                month_reserved_usd: nanos_to_usd(mr),
            },
        })
    }

    async fn settle_budget(
        &self,
        key: &KeyId,
        reservation: BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        let (day, month) = periods(at);
        let held = self.budget_keys(key, reservation.day, reservation.month);
        let now = self.budget_keys(key, day, month);
        let member = if reservation.nanos > 0 {
            reservation.id.redis_member()
        } else {
            ""
        };
        self.call(async |mut conn| {
            self.scripts
                .settle
                .key(&held[0])
                .key(&held[1])
                .key(&held[2])
                .key(&now[0])
                .key(&now[1])
                .arg(member)
                .arg(reservation.nanos)
                .arg(usd_to_nanos(cost_usd))
                .arg(millis(BUDGET_DAY_TTL, 1))
                .arg(millis(BUDGET_MONTH_TTL, 1))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn add_spend(
        &self,
        key: &KeyId,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        if usd_to_nanos(cost_usd) == 0 {
            return Ok(());
        }
        let (day, month) = periods(at);
        let none = BudgetReservation {
            id: Handle::Redis(String::new()),
            nanos: 0,
            day,
            month,
        };
        self.settle_budget(key, none, cost_usd, at).await
    }

    async fn budget_usage(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
    ) -> Result<BudgetUsage, CounterError> {
        let (day, month) = periods(at);
        let keys = self.budget_keys(key, day, month);
        let reply: Vec<i64> = self
            .call(async |mut conn| {
                self.scripts
                    .usage
                    .key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(day)
                    .arg(month)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        let [ds, dr, ms, mr] = reply[..] else {
            return Err(reply_err("the usage script"));
        };
        Ok(BudgetUsage {
            day_spent_usd: nanos_to_usd(ds),
            day_reserved_usd: nanos_to_usd(dr),
            month_spent_usd: nanos_to_usd(ms),
            month_reserved_usd: nanos_to_usd(mr),
        })
    }

    async fn reconcile_spend(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
    ) -> Result<(), CounterError> {
        let (day, month) = periods(at);
        let keys = self.budget_keys(key, day, month);
        self.call(async |mut conn| {
            self.scripts
                .reconcile_spend
                .key(&keys[0])
                .key(&keys[1])
                .arg(usd_to_nanos(day_usd))
                .arg(usd_to_nanos(month_usd))
                .arg(millis(BUDGET_DAY_TTL, 1))
                .arg(millis(BUDGET_MONTH_TTL, 1))
                .invoke_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn tally(&self, items: &[Tally<'_>], ttl: Duration) -> Result<Vec<i64>, CounterError> {
        for t in items {
            validate_set(t.set)?;
        }
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = items
            .iter()
            .map(|t| self.key("tally", t.key, &format!(":{}:{}", t.set, t.bucket)))
            .collect();
        let ttl_ms = millis(ttl, 1);
        self.call(async |mut conn| {
            let mut pipe = ::redis::pipe();
            for (k, t) in keys.iter().zip(items) {
                pipe.cmd("INCRBY").arg(k).arg(t.amount);
                pipe.cmd("PEXPIRE").arg(k).arg(ttl_ms).ignore();
            }
            pipe.query_async::<Vec<i64>>(&mut conn).await
        })
        .await
    }

    async fn distinct_add(
        &self,
        set: &str,
        key: &KeyId,
        at: OffsetDateTime,
        items: &[&str],
    ) -> Result<(), CounterError> {
        validate_set(set)?;
        if items.is_empty() {
            return Ok(());
        }
        let hll = self.key(
            "hll",
            key,
            &format!(":{set}:{}", crate::counters::hour_of(at)),
        );
        self.call(async |mut conn| {
            ::redis::pipe()
                .cmd("PFADD")
                .arg(&hll)
                .arg(items)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&hll)
                .arg(millis(DISTINCT_RETENTION, 1))
                .ignore()
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    async fn distinct_count(
        &self,
        set: &str,
        key: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<u64, CounterError> {
        validate_set(set)?;
        let hours: Vec<String> = hour_span(from, to)?
            .map(|h| self.key("hll", key, &format!(":{set}:{h}")))
            .collect();
        if hours.is_empty() {
            return Ok(0);
        }
        let n: i64 = self
            .call(async |mut conn| {
                ::redis::cmd("PFCOUNT")
                    .arg(&hours)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(to_u64(n))
    }

    async fn publish_key_change(&self, key: &KeyId) -> Result<(), CounterError> {
        let channel = self.channel();
        self.call(async |mut conn| {
            ::redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(key.as_str())
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?;
        Ok(())
    }

    async fn subscribe_key_changes(&self) -> Result<KeyChanges, CounterError> {
        let mut subscribed = self.ensure_subscriber();
        // Wait (briefly) for the subscription, so changes published after this returns are
        // delivered. If Redis is down, return anyway: the task keeps trying and sends
        // `Resync` once it is subscribed.
        let wait = subscribed.wait_for(|s| *s);
        let _ = tokio::time::timeout(self.connect_timeout + self.op_timeout, wait).await;
        Ok(KeyChanges::new(self.changes.subscribe()))
    }

    fn health(&self) -> CountersHealth {
        CountersHealth {
            backend: "redis",
            available: self.health.available.load(Ordering::Relaxed),
            failures: self.health.failures.load(Ordering::Relaxed),
        }
    }
}

/// Keeps one subscription to the key-change channel, re-establishing it after any failure.
struct SubscriptionTask {
    client: Client,
    channel: String,
    changes: broadcast::Sender<KeyChange>,
    subscribed: watch::Sender<bool>,
    connect_timeout: Duration,
    op_timeout: Duration,
    retry: Duration,
}

impl SubscriptionTask {
    async fn run(self) {
        let mut established_before = false;
        loop {
            match self.subscribe().await {
                Ok((mut sink, mut stream)) => {
                    if established_before || self.changes.receiver_count() > 0 {
                        // Anything published while we were not subscribed is lost: tell
                        // every receiver to re-read all keys.
                        let _ = self.changes.send(KeyChange::Resync);
                    }
                    established_before = true;
                    let _ = self.subscribed.send(true);
                    let why = self.forward(&mut sink, &mut stream).await;
                    let _ = self.subscribed.send(false);
                    tracing::warn!(
                        reason = why,
                        "Redis key-change subscription lost; reconnecting"
                    );
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Redis key-change subscription failed; retrying");
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn subscribe(
        &self,
    ) -> Result<(::redis::aio::PubSubSink, ::redis::aio::PubSubStream), CounterError> {
        let pubsub = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| CounterError::Unavailable("timed out connecting to Redis".to_owned()))?
            .map_err(classify)?;
        let (mut sink, stream) = pubsub.split();
        tokio::time::timeout(self.op_timeout, sink.subscribe(&self.channel))
            .await
            .map_err(|_| CounterError::Unavailable("timed out subscribing".to_owned()))?
            .map_err(classify)?;
        Ok((sink, stream))
    }

    /// Forwards messages until the connection fails; returns why.
    async fn forward(
        &self,
        sink: &mut ::redis::aio::PubSubSink,
        stream: &mut ::redis::aio::PubSubStream,
    ) -> &'static str {
        let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return "connection closed" };
                    match std::str::from_utf8(msg.get_payload_bytes()).ok().map(KeyId::new) {
                        Some(Ok(id)) => {
                            let _ = self.changes.send(KeyChange::Key(id));
                        }
                        // Payloads come from our own replicas; anything else is ignored.
                        _ => tracing::debug!("ignored a malformed key-change message"),
                    }
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(self.op_timeout, sink.ping::<String>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return "ping failed";
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(validate_prefix("stormwall:").is_ok());
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("a b").is_err());
        assert!(validate_prefix("{x}").is_err());
        assert!(validate_prefix(&"x".repeat(65)).is_err());
    }

    #[test]
    fn bad_urls_do_not_echo_the_url() {
        let cfg = RedisConfig::from_url("redis://:hunter2@host:notaport/0");
        let err = RedisCounters::new(&cfg, &|_| None).err().unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn keys_share_a_cluster_slot_per_key() {
        let c =
            RedisCounters::new(&RedisConfig::from_url("redis://127.0.0.1:1/"), &|_| None).unwrap();
        let id = KeyId::new("abcdefABCDEF").unwrap();
        assert_eq!(c.key("rl", &id, ":r"), "stormwall:rl:{abcdefABCDEF}:r");
        assert_eq!(c.key("cc", &id, ""), "stormwall:cc:{abcdefABCDEF}");
    }
}
