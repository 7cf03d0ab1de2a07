-- select_begin.lua: finds the selection of (run, step) or reserves a selection number.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  run key ('' for an anonymous selection)
-- Reply: {'existing', n, idx, sampled, means, expected, version}
--      | {'ok', n} (n reserved for a new draw) | {'err', kind, msg}
local meta, prefix, run_key = KEYS[1], ARGV[2], ARGV[3]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
if run_key ~= '' then
  local n = redis.call('HGET', prefix .. 'runs', run_key)
  if n then
    local f = redis.call('HMGET', prefix .. 'sel:' .. n, 'idx', 'sampled', 'means', 'expected', 'version')
    if f[1] then return {'existing', n, f[1], f[2], f[3], f[4], f[5]} end
  end
end
return {'ok', redis.call('HINCRBY', meta, 'selctr', 1) - 1}
