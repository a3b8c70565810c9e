-- PUSH_TIMED. KEYS: the timed marker, the delayed zset, the priority's list (Q for 0), Q.
-- ARGV: delay ms, priority digit, bodies...
-- Idle consumers block in BLMOVE on Q only: the token 'geboost:wake' pushed to an empty Q wakes
-- one (it takes again: the new message, or the new next due time); takers drop the token.
-- The marker tells takers that priority lists and delayed messages may exist (plain queues
-- never pay for looking). A delayed message waits in the zset, scored by its due time on the
-- server clock, as "<priority digit><body>"; takers move it to its list when due.
redis.call('SET', KEYS[1], '1')
local delay_ms = tonumber(ARGV[1])
if delay_ms <= 0 then
  for i = 3, #ARGV do redis.call('LPUSH', KEYS[3], ARGV[i]) end
  if redis.call('LLEN', KEYS[4]) == 0 then redis.call('LPUSH', KEYS[4], 'geboost:wake') end
  return #ARGV - 2
end
local t = redis.call('TIME')
local due_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay_ms
for i = 3, #ARGV do redis.call('ZADD', KEYS[2], due_ms, ARGV[2] .. ARGV[i]) end
if redis.call('LLEN', KEYS[4]) == 0 then redis.call('LPUSH', KEYS[4], 'geboost:wake') end
return #ARGV - 2
