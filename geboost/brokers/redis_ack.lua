-- ACK. KEYS: held list. ARGV: bodies. Scans from the tail, where the oldest holdings are.
local removed = 0
for i = 1, #ARGV do removed = removed + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return removed
