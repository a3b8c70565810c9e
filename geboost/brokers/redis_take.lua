-- TAKE. KEYS: leases, promises, clock (see redis_clock.lua), queue, this consumer's held list,
-- the timed marker, the delayed zset.
-- ARGV: promise ms, lease ms, consumer id, priority-list key prefix, max count, then the bodies
-- this consumer acknowledges (removed from its held list first: one round trip for both) as
-- their lengths ("12,40,7") and their concatenation.
-- Renews the lease in the same step, so a consumer has a lease before it holds anything.
-- Returns {status, lengths, concatenated bodies}: one reply of three parts whatever the count
-- (a reply of N parts costs the client N parses). Status 0 = no timed pushes ever (plain
-- queue), -1 = timed but nothing delayed, else the ms until the next delayed message is due.
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[3])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[1]), ARGV[3])
-- Acks. Calls mostly finish in the order they were taken, and the oldest holdings sit at the
-- held list's tail: the run of acked bodies there goes with one LTRIM, the rest by an LREM each
-- (a redis.call costs more than the command it runs: one per ack was most of the script).
local acked, pos = ARGV[7], 1
local pending, count = {}, 0
for n in string.gmatch(ARGV[6], '%d+') do
  local stop = pos + tonumber(n)
  local body = string.sub(acked, pos, stop - 1)
  pending[body] = (pending[body] or 0) + 1
  count = count + 1
  pos = stop
end
if count > 0 then
  local tail = redis.call('LRANGE', KEYS[5], -count, -1)
  local cut = 0
  for i = #tail, 1, -1 do
    local left = pending[tail[i]]
    if not left or left == 0 then break end
    pending[tail[i]] = left - 1
    cut = cut + 1
  end
  if cut > 0 then redis.call('LTRIM', KEYS[5], 0, -cut - 1) end
  for body, left in pairs(pending) do
    for _ = 1, left do redis.call('LREM', KEYS[5], -1, body) end
  end
end
local want = tonumber(ARGV[5])
local bodies, lengths = {}, {}
local status = 0
-- One RPOP of many and one LPUSH per source list (not an LMOVE per message): the held list
-- ends up as LMOVE RIGHT -> LEFT one by one would leave it, oldest taken at its tail.
local function drain(source)
  local room = want - #bodies
  if room <= 0 then return end
  local popped = redis.call('RPOP', source, room)
  if not popped then return end
  local kept = {}
  for _, body in ipairs(popped) do
    if body ~= 'geboost:wake' then  -- a wake-up token of push_timed, not a message
      kept[#kept + 1] = body
      bodies[#bodies + 1] = body
      lengths[#lengths + 1] = #body
    end
  end
  for i = 1, #kept, 1000 do  -- unpack() of a huge batch would overflow Lua's stack
    redis.call('LPUSH', KEYS[5], unpack(kept, i, math.min(i + 999, #kept)))
  end
end
if redis.call('EXISTS', KEYS[6]) == 1 then
  local lanes = {}
  for priority = 9, 1, -1 do lanes[#lanes + 1] = ARGV[4] .. priority end
  -- Due delayed messages join the pushing end of their priority's list, in due order.
  local due = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now_ms, 'LIMIT', 0, 1000)
  for _, member in ipairs(due) do
    redis.call('ZREM', KEYS[7], member)
    local priority = string.sub(member, 1, 1)
    local lane = KEYS[4]
    if priority ~= '0' then lane = ARGV[4] .. priority end
    redis.call('LPUSH', lane, string.sub(member, 2))
  end
  if redis.call('EXISTS', unpack(lanes)) > 0 then
    for _, lane in ipairs(lanes) do drain(lane) end
  end
  status = -1
  local next_due = redis.call('ZRANGE', KEYS[7], 0, 0, 'WITHSCORES')
  if #next_due > 0 then status = math.max(1, tonumber(next_due[2]) - now_ms) end
end
drain(KEYS[4])
return {status, table.concat(lengths, ','), table.concat(bodies)}
