//! The Lua scripts that make every lease transfer atomic on Redis, and the key names.
//!
//! Rate buckets (`rpm`, `tpm`) are GCRA buckets like the local `TokenBucket`: one key holds
//! the theoretical arrival time in microseconds of Redis's own clock (`TIME`), so replicas'
//! clocks never matter. Held amounts (`conc`, `budget`) are a hash: one field `r:<replica>`
//! per replica holding a lease, plus `spend` for a budget. Every script first drops the
//! fields of replicas whose liveness (a score in the `replicas` sorted set) has expired, so a
//! crashed replica's slots and reservations come back by themselves.

use redis::Script;

/// `rate(op, n, capacity, interval_us)` on KEYS[1]; op is take | charge | refund.
/// Returns `{granted, used, retry_after_ms}`, `used` the capacity less what the bucket could
/// grant after the op (what the fleet's `x-ratelimit-remaining-*` headers start from).
pub const RATE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local op = ARGV[1]
local n = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local iv = tonumber(ARGV[4])
local tol = cap * iv
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
if left > cap then left = cap end
return {granted, cap - left, wait}
"#;

/// `held(op, n, limit, replica, seed_spend, unleased, ttl_ms)` on KEYS[1] (the hash) with
/// KEYS[2] (the replicas set); op is take | charge | return | set | spend; the hash expires
/// `ttl_ms` after its last use (0: never). Returns `{granted, used, 0}`.
pub const HELD: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]
local n = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local me = ARGV[4]
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
  if granted > 0 then redis.call('HINCRBY', KEYS[1], 'r:' .. me, granted) end
  used = used + granted
elseif op == 'charge' then
  granted = n
  redis.call('HINCRBY', KEYS[1], 'r:' .. me, n)
  used = used + n
elseif op == 'set' then
  if n > 0 then redis.call('HSET', KEYS[1], 'r:' .. me, n) else redis.call('HDEL', KEYS[1], 'r:' .. me) end
  used = used - mine + n
elseif op == 'return' then
  local back = math.min(n, mine)
  if back > 0 then redis.call('HINCRBY', KEYS[1], 'r:' .. me, -back) end
  used = used - back
else
  local leased = math.min(n, mine)
  if leased > 0 then redis.call('HINCRBY', KEYS[1], 'r:' .. me, -leased) end
  redis.call('HINCRBY', KEYS[1], 'spend', n + tonumber(ARGV[6]))
  used = used - leased + n + tonumber(ARGV[6])
end
if tonumber(ARGV[7]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
return {granted, used, 0}
"#;

/// `alive(replica, ttl_ms)` on KEYS[1] (the replicas set): renews this replica's liveness,
/// drops expired ones, returns how many are alive.
pub const ALIVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"#;

/// The three scripts, hashed once.
pub struct Scripts {
    /// [`RATE`].
    pub rate: Script,
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
