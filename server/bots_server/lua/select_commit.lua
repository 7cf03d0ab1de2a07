-- select_commit.lua: stores a drawn selection, unless another replica stored (run, step) first.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  run key ('' for anonymous)
-- ARGV[4]  selection number (from select_begin)
-- ARGV[5]  task indices, packed '<I4' each
-- ARGV[6]  sampled values, packed '<d' each
-- ARGV[7]  posterior means, packed '<d' each
-- ARGV[8]  expected trials per task
-- ARGV[9]  deadline (unix seconds) after which the selection expires
-- ARGV[10] posterior version (steps applied) the draw used
-- ARGV[11] time-to-live of the selection key, seconds
-- Reply: {'ok'} | {'existing', n, idx, sampled, means, expected, version} | {'err', kind, msg}
local meta, prefix, run_key, n = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
if run_key ~= '' then
  local m = redis.call('HGET', prefix .. 'runs', run_key)
  if m then
    local f = redis.call('HMGET', prefix .. 'sel:' .. m, 'idx', 'sampled', 'means', 'expected', 'version')
    if f[1] then return {'existing', m, f[1], f[2], f[3], f[4], f[5]} end
  end
  redis.call('HSET', prefix .. 'runs', run_key, n)
end
local sel = prefix .. 'sel:' .. n
redis.call('HSET', sel, 'idx', ARGV[5], 'sampled', ARGV[6], 'means', ARGV[7],
  'expected', ARGV[8], 'deadline', ARGV[9], 'version', ARGV[10], 'state', 'open',
  'remaining', #ARGV[5] / 4)
redis.call('EXPIRE', sel, ARGV[11])
redis.call('ZADD', prefix .. 'open', ARGV[9], n)
return {'ok'}
