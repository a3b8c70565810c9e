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
local acked, pos = ARGV[7], 1
for n in string.gmatch(ARGV[6], '%d+') do
  local stop = pos + tonumber(n)
  redis.call('LREM', KEYS[5], -1, string.sub(acked, pos, stop - 1))
  pos = stop
end
local want = tonumber(ARGV[5])
local bodies, lengths = {}, {}
local status = 0
local function drain(source)
  while #bodies < want do
    local body = redis.call('LMOVE', source, KEYS[5], 'RIGHT', 'LEFT')
    if not body then return end
    if body == 'geboost:wake' then
      redis.call('LREM', KEYS[5], 1, body)  -- a wake-up token of push_timed, not a message
    else
      bodies[#bodies + 1] = body
      lengths[#lengths + 1] = #body
    end
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
