-- Token bucket in Redis+Lua: the do-it-yourself rate limiter most teams run, and Tollgate's
-- baseline. Same semantics as Tollgate's buckets (continuous fill):
--   * a new key starts full (capacity tokens);
--   * fill_amount tokens are added per interval, continuously, capped at capacity;
--   * a take of n tokens that would go below zero takes nothing and is refused.
-- Time comes from the server (TIME), so clients' clocks do not matter.
--
-- KEYS[1]  bucket key
-- ARGV[1]  capacity (tokens)
-- ARGV[2]  fill_amount (tokens per interval)
-- ARGV[3]  interval (microseconds, > 0)
-- ARGV[4]  tokens to take
-- Returns { accepted (1|0), remaining tokens (string), wait until n tokens exist (us, -1 never) }
--
-- The bucket is a hash { t = tokens, ts = last fill time in us }. It expires once it would be
-- full again: a missing key and a full bucket are the same thing, so memory holds only keys
-- that are below capacity.

local key = KEYS[1]
local capacity = tonumber(ARGV[1])
local fill = tonumber(ARGV[2])
local interval = tonumber(ARGV[3])
local n = tonumber(ARGV[4])

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])

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
local wait = 0
if tokens >= n then
  accepted = 1
  tokens = tokens - n
elseif n > capacity or fill <= 0 then
  wait = -1
else
  wait = math.ceil((n - tokens) * interval / fill)
end

redis.call('HSET', key, 't', tokens, 'ts', ts)
if fill > 0 then
  local full_in_ms = math.ceil((capacity - tokens) * interval / fill / 1000)
  redis.call('PEXPIRE', key, math.max(full_in_ms, 1))
end
return { accepted, tostring(tokens), wait }
