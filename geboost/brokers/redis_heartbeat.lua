-- HEARTBEAT. KEYS: leases, promises, clock (see redis_clock.lua).
-- ARGV: promise ms, lease ms, consumer ids... Each lease carries its owner's length.
local lease_until = now_ms + tonumber(ARGV[2])
local promise_until = now_ms + tonumber(ARGV[1])
for i = 3, #ARGV do
  redis.call('ZADD', KEYS[1], lease_until, ARGV[i])
  redis.call('ZADD', KEYS[2], promise_until, ARGV[i])
end
return #ARGV - 2
