-- IN_FLIGHT. KEYS: leases, legacy consumers zset. ARGV: held-list key prefix.
local total = 0
for k = 1, 2 do
  for _, id in ipairs(redis.call('ZRANGE', KEYS[k], 0, -1)) do
    total = total + redis.call('LLEN', ARGV[1] .. id)
  end
end
return total
