-- Book ARGV[2] start slots, ARGV[1] ms apart, on the fleet's schedule of one queue.
-- KEYS[1]: the next free start time (server clock, ms, with a fraction: an interval of
-- 16.667 ms must not round to 16 or 17, or the fleet's rate would be off by 4 %).
-- Returns the microseconds from now until the first booked slot (0 when the schedule is free).
--
-- A schedule in the past restarts from now: an idle queue earns no credit, so there is no burst
-- after a pause. The key expires a second after its last booked slot, so a queue nobody
-- consumes leaves nothing behind.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval_ms = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local first_ms = tonumber(redis.call('GET', KEYS[1])) or now_ms
if first_ms < now_ms then
  first_ms = now_ms
end
local next_ms = first_ms + interval_ms * count
redis.call('SET', KEYS[1], string.format('%.3f', next_ms),
           'PX', math.ceil(next_ms - now_ms) + 1000)
return math.floor((first_ms - now_ms) * 1000)
