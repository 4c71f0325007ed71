-- The token bucket of token_bucket.lua, for many keys in one call: the fair Redis baseline
-- for a batch of checks (one EVALSHA, one round trip, one script run deciding them all, as one
-- CHECK_BATCH frame does for Tollgate). Per key, exactly the semantics of token_bucket.lua:
--   * a new key starts full (capacity tokens);
--   * fill_amount tokens are added per interval, continuously, capped at capacity;
--   * a take of n tokens that would go below zero takes nothing and is refused.
-- Keys are decided in order, so a key named twice sees its first take.
--
-- KEYS[1..k]    bucket keys
-- ARGV[1]       capacity (tokens)
-- ARGV[2]       fill_amount (tokens per interval)
-- ARGV[3]       interval (microseconds, > 0)
-- ARGV[3 + i]   tokens to take from KEYS[i]
-- Returns { accepted_1 (1|0), ..., accepted_k }: the verdicts only (the single-key script
-- also returns the remaining tokens and the wait; leaving them out makes the reply smaller,
-- which favours Redis).

local capacity = tonumber(ARGV[1])
local fill = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])

local verdicts = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[3 + i])
  local state = redis.call('HMGET', key, 't', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = capacity
    ts = now
  end
  if now > ts then
    tokens = math.min(capacity, tokens + fill * (now - ts) / interval)
    ts = now
  end
  local accepted = 0
  if tokens >= n then
    accepted = 1
    tokens = tokens - n
  end
  redis.call('HSET', key, 't', tokens, 'ts', ts)
  if fill > 0 then
    local full_in_ms = math.ceil((capacity - tokens) * interval / fill / 1000)
    redis.call('PEXPIRE', key, math.max(full_in_ms, 1))
  end
  verdicts[i] = accepted
end
return verdicts
