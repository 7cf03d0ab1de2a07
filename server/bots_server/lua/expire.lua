-- expire.lua: closes open selections whose deadline has passed.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  now (unix seconds)
-- ARGV[4]  most selections to close in one call
-- ARGV[5]  retention of a closed selection, seconds
-- Reply: {'ok', closed} | {'err', kind, msg}
local meta, prefix = KEYS[1], ARGV[2]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
local due = redis.call('ZRANGEBYSCORE', prefix .. 'open', '-inf', ARGV[3], 'LIMIT', 0, ARGV[4])
local closed = 0
for _, n in ipairs(due) do
  if redis.call('HGET', prefix .. 'sel:' .. n, 'state') == 'open' then
    close_selection(meta, prefix, n, tonumber(ARGV[5]))
    redis.call('HINCRBY', meta, 'expired', 1)
    closed = closed + 1
  else
    redis.call('ZREM', prefix .. 'open', n)
  end
end
return {'ok', closed}
