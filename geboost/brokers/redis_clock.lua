-- The lease clock, run first by every script that records a geboost touch of the queue
-- (take, heartbeat, recover). KEYS[1]: leases zset (consumer id -> lease expiry, server ms),
-- KEYS[2]: promises zset (consumer id -> server ms by which it promised to touch again),
-- KEYS[3]: the server time of the last touch.
--
-- Time in which nobody could reach Redis must not count against any lease. A promise made
-- before the last touch and broken since means that for longer than its owner's beat
-- tolerance NOBODY touched the queue: an outage (or every worker stalled). Every lease is then
-- pushed forward by that silence, so a lease keeps after the outage what it had left before.
-- A promise is never pushed, so a dead consumer's broken promise triggers at most one push
-- (by the gap since the previous touch) and its lease still runs out.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last_ms = tonumber(redis.call('GET', KEYS[3]))
if last_ms and now_ms > last_ms then
  local broken = redis.call('ZRANGEBYSCORE', KEYS[2], last_ms, '(' .. now_ms, 'LIMIT', 0, 1)
  if #broken > 0 then
    local gap_ms = now_ms - last_ms
    local leases = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #leases, 2 do
      redis.call('ZADD', KEYS[1], tonumber(leases[i + 1]) + gap_ms, leases[i])
    end
  end
end
redis.call('SET', KEYS[3], now_ms)
