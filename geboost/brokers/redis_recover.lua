-- RECOVER. KEYS: leases, promises, clock (see redis_clock.lua), queue, legacy consumers zset.
-- ARGV: forget ms, held-list key prefix.
-- Consumers whose lease expired (by the server clock, after the clock's outage rule) lose
-- what they hold. Their entry stays (and is swept again on every run) until it has been
-- expired for "forget ms": a take already in flight when the lease ran out can then still
-- land in their list and be swept back.
-- The legacy zset (consumer id -> last beat, written by geboost before leases carried their
-- expiry) is only swept for entries silent for "forget ms", which no live worker is.
-- Returns {consumer id, moved count, ...} for the consumers that held something.
local forget_before = now_ms - tonumber(ARGV[1])
local out = {}
local function sweep(id)
  local held = ARGV[2] .. id
  local moved = 0
  while redis.call('LMOVE', held, KEYS[4], 'LEFT', 'RIGHT') do moved = moved + 1 end
  if moved > 0 then
    out[#out + 1] = id
    out[#out + 1] = moved
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms, 'WITHSCORES')
for i = 1, #expired, 2 do
  sweep(expired[i])
  if tonumber(expired[i + 1]) < forget_before then
    redis.call('ZREM', KEYS[1], expired[i])
    redis.call('ZREM', KEYS[2], expired[i])
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. forget_before)) do
  sweep(id)
  redis.call('ZREM', KEYS[5], id)
end
return out
