-- RELEASE. KEYS: queue, held list, leases, promises. ARGV: consumer id. Everything held goes
-- back to the taking end of the queue, oldest taken first, and the lease ends.
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return moved
