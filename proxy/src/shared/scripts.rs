//! The Lua scripts that make every lease transfer atomic on Redis, and the key names.
//!
//! `rpm` is a sliding 60 s window like the local `RequestWindow`: a sorted set of admission
//! times per subject ([`WINDOW`]), per-second counts above 1,000 ([`SECONDS`]). `tpm` is a GCRA bucket like the local `TokenBucket`: one key holds
//! the theoretical arrival time in microseconds of Redis's own clock (`TIME`), so replicas'
//! clocks never matter. Held amounts (`conc`, `budget`) are a hash: one field `r:<replica>`
//! per replica holding a lease, plus `spend` for a budget. Every script first drops the
//! fields of replicas whose liveness (a score in the `replicas` sorted set) has expired, so a
//! crashed replica's slots and reservations come back by themselves.

use redis::Script;

/// The first lines of the scripts that count in milliseconds: Redis's own clock (`TIME`) as
/// `t`, and `now` in milliseconds of it. (A macro, not a const, so `concat!` can join it.)
macro_rules! now_ms {
    () => {
        "
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"
    };
}

/// The arguments every bucket script starts with: `op` (ARGV[1]), the amount `n` (ARGV[2]) and
/// the bucket's `limit` (ARGV[3]).
macro_rules! op_n_limit {
    () => {
        "local op = ARGV[1]
local n = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
"
    };
}

/// `rate(op, n, capacity, interval_us)` on KEYS[1]; op is take | charge | refund.
/// Returns `{granted, used, retry_after_ms}`, `used` the capacity less what the bucket could
/// grant after the op (what the fleet's `x-ratelimit-remaining-*` headers start from).
pub const RATE: &str = concat!(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"#,
    op_n_limit!(),
    r#"local iv = tonumber(ARGV[4])
local tol = limit * iv
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local level = math.max(tat, now)
local granted = 0
local wait = 0
if op == 'take' then
  local avail = math.floor((now + tol - level) / iv)
  if avail < 0 then avail = 0 end
  granted = math.min(n, avail)
  level = level + granted * iv
  if granted < n then
    wait = math.max(1, math.ceil((level + iv - now - tol) / 1000))
  end
elseif op == 'charge' then
  granted = n
  level = level + n * iv
else
  level = math.max(tat - n * iv, math.min(now, tat))
end
local ttl = math.max(1, math.ceil((level - now) / 1000)) + 60000
redis.call('SET', KEYS[1], string.format('%.0f', level), 'PX', ttl)
local left = math.floor((now + tol - level) / iv)
if left < 0 then left = 0 end
if left > limit then left = limit end
return {granted, limit - left, wait}
"#
);

/// `window(op, n, limit)` on KEYS[1], a sorted set of admission times (Redis `TIME`, in
/// milliseconds): the fleet's sliding 60 s window for `rpm`, so any 60 s window admits at most
/// `limit` units taken from it. op is take | charge | refund: a take grants what fits
/// (`limit` less the members younger than 60 s), a charge adds unconditionally, a refund removes
/// the `n` newest (units leased and never spent). Returns `{granted, used, retry_after_ms}`,
/// `retry_after_ms` the time until the first member that must leave for the rest of the ask to
/// fit does. The set expires 60 s after its last change.
pub const WINDOW: &str = concat!(
    now_ms!(),
    op_n_limit!(),
    r#"redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
local count = redis.call('ZCARD', KEYS[1])
local granted = 0
local wait = 0
if op == 'refund' then
  if n > 0 and count > 0 then redis.call('ZPOPMAX', KEYS[1], math.min(n, count)) end
else
  granted = n
  if op == 'take' then
    granted = math.max(0, math.min(n, limit - count))
    if granted < n then
      local need = count + n - limit
      local first = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
      if first[2] then wait = math.max(1, tonumber(first[2]) + 60000 - now) else wait = 1 end
    end
  end
  -- Members are unique: the time in microseconds and a sequence number.
  local seq = count
  for _ = 1, granted do
    repeat
      seq = seq + 1
    until redis.call('ZADD', KEYS[1], 'NX', now, t[1] .. '.' .. t[2] .. ':' .. seq) == 1
  end
end
count = redis.call('ZCARD', KEYS[1])
if count > 0 then redis.call('PEXPIRE', KEYS[1], 60000) end
return {granted, math.min(count, limit), wait}
"#
);

/// `seconds(op, n, limit)` on KEYS[1], a hash of admissions per second of Redis `TIME`: the
/// fleet's 60 s window for an `rpm` above `limits::window::EXACT_MAX`, where a member per
/// admission would cost too much memory. Same ops and answer as [`WINDOW`]; a second counts
/// until all of it is older than 60 s, so a take can be refused up to a second early, never
/// admitted late.
pub const SECONDS: &str = concat!(
    now_ms!(),
    op_n_limit!(),
    r#"local first = math.floor((now - 59999) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
local count = 0
for i = 1, #all, 2 do
  local sec = tonumber(all[i])
  local c = tonumber(all[i + 1])
  if sec < first or c <= 0 then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(live, {sec, c})
    count = count + c
  end
end
table.sort(live, function(a, b) return a[1] < b[1] end)
local granted = 0
local wait = 0
if op == 'refund' then
  local left = n
  for i = #live, 1, -1 do
    if left <= 0 then break end
    local d = math.min(left, live[i][2])
    redis.call('HINCRBY', KEYS[1], tostring(live[i][1]), -d)
    left = left - d
    count = count - d
  end
else
  granted = n
  if op == 'take' then
    granted = math.max(0, math.min(n, limit - count))
    if granted < n then
      local need = count + n - limit
      local freed = 0
      wait = 1
      for i = 1, #live do
        freed = freed + live[i][2]
        if freed >= need then
          wait = math.max(1, live[i][1] * 1000 + 60999 - now)
          break
        end
      end
    end
  end
  if granted > 0 then
    redis.call('HINCRBY', KEYS[1], tostring(math.floor(now / 1000)), granted)
    count = count + granted
  end
end
if count > 0 then redis.call('PEXPIRE', KEYS[1], 61000) end
return {granted, math.min(count, limit), wait}
"#
);

/// `held(op, n, limit, replica, seed_spend, unleased, ttl_ms)` on KEYS[1] (the hash) with
/// KEYS[2] (the replicas set); op is take | charge | return | set | spend; the hash expires
/// `ttl_ms` after its last use (0: never). Returns `{granted, used, 0}`.
pub const HELD: &str = concat!(
    now_ms!(),
    op_n_limit!(),
    r#"local me = ARGV[4]
local mine_field = 'r:' .. me
local function lease(d) redis.call('HINCRBY', KEYS[1], mine_field, d) end
if ARGV[5] ~= '' then redis.call('HSETNX', KEYS[1], 'spend', ARGV[5]) end
local all = redis.call('HGETALL', KEYS[1])
local held = 0
local mine = 0
local spend = 0
for i = 1, #all, 2 do
  local f = all[i]
  local v = tonumber(all[i + 1])
  if f == 'spend' then
    spend = v
  else
    local r = string.sub(f, 3)
    local exp = redis.call('ZSCORE', KEYS[2], r)
    if r ~= me and ((not exp) or tonumber(exp) < now) then
      redis.call('HDEL', KEYS[1], f)
    else
      held = held + v
      if r == me then mine = v end
    end
  end
end
local used = spend + held
local granted = 0
if op == 'take' then
  granted = math.min(n, math.max(0, limit - used))
  if granted > 0 then lease(granted) end
  used = used + granted
elseif op == 'charge' then
  granted = n
  lease(n)
  used = used + n
elseif op == 'set' then
  if n > 0 then redis.call('HSET', KEYS[1], mine_field, n) else redis.call('HDEL', KEYS[1], mine_field) end
  used = used - mine + n
elseif op == 'return' then
  local back = math.min(n, mine)
  if back > 0 then lease(-back) end
  used = used - back
else
  local leased = math.min(n, mine)
  if leased > 0 then lease(-leased) end
  redis.call('HINCRBY', KEYS[1], 'spend', n + tonumber(ARGV[6]))
  used = used - leased + n + tonumber(ARGV[6])
end
if tonumber(ARGV[7]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
return {granted, used, 0}
"#
);

/// `alive(replica, ttl_ms)` on KEYS[1] (the replicas set): renews this replica's liveness,
/// drops expired ones, returns how many are alive.
pub const ALIVE: &str = concat!(
    now_ms!(),
    r#"redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"#
);

/// The scripts, hashed once.
pub struct Scripts {
    /// [`RATE`].
    pub rate: Script,
    /// [`WINDOW`].
    pub window: Script,
    /// [`SECONDS`].
    pub seconds: Script,
    /// [`HELD`].
    pub held: Script,
    /// [`ALIVE`].
    pub alive: Script,
}

impl Scripts {
    /// Hashes the scripts.
    pub fn new() -> Self {
        Scripts {
            rate: Script::new(RATE),
            window: Script::new(WINDOW),
            seconds: Script::new(SECONDS),
            held: Script::new(HELD),
            alive: Script::new(ALIVE),
        }
    }
}

/// Redis key names under a prefix.
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (for example `sluice:`).
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_string(),
        }
    }

    /// The sorted set of live replicas.
    pub fn replicas(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    /// The pub/sub channel that announces key and team changes.
    pub fn keys_channel(&self) -> String {
        format!("{}keys-changed", self.prefix)
    }

    /// A subject's bucket; a budget's key carries its period start, so a new period starts
    /// empty.
    pub fn bucket(&self, subject: &str, dim: &str, period_start: Option<u64>) -> String {
        match period_start {
            Some(p) => format!("{}b:{subject}:{dim}:{p}", self.prefix),
            None => format!("{}b:{subject}:{dim}", self.prefix),
        }
    }
}
