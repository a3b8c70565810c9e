-- REQUEUE. KEYS: queue, held list. ARGV: bodies, ARGV[1] to be taken first. A body no longer
-- held (recovered by another consumer meanwhile) is skipped, so it cannot be doubled.
local moved = 0
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[2], -1, ARGV[i]) > 0 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
return moved
