-- TAKE. KEYS: leases, promises, clock (see redis_clock.lua), queue, this consumer's held list.
-- ARGV: promise ms, lease ms, consumer id, max count.
-- Renews the lease in the same step, so a consumer has a lease before it holds anything.
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[1]), ARGV[3])
local out = {}
for i = 1, tonumber(ARGV[4]) do
  local body = redis.call('LMOVE', KEYS[4], KEYS[5], 'RIGHT', 'LEFT')
  if not body then break end
  out[i] = body
end
return out
