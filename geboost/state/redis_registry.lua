-- A registry of members with a time to live each: KEYS[1] is a hash member -> info, KEYS[2] a
-- sorted set member -> expiry (server clock, ms). ARGV[1]: 'put' or 'list'; for 'put',
-- ARGV[2]: member, ARGV[3]: info, ARGV[4]: ttl in ms.
--
-- Every call first prunes the members past their expiry (a worker killed without saying
-- goodbye), so neither key grows with dead members. Both keys expire with the last live
-- member: a queue that nobody consumes any more leaves nothing behind.
-- 'put' returns nothing; 'list' returns the live members' hash, flat (member, info, ...).
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, 1000)
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
if ARGV[1] == 'list' then
  return redis.call('HGETALL', KEYS[1])
end
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[4]), ARGV[2])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
local last_ms = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')[2]
redis.call('PEXPIREAT', KEYS[1], last_ms)
redis.call('PEXPIREAT', KEYS[2], last_ms)
return 0
