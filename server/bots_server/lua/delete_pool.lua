-- delete_pool.lua: deletes a pool incarnation's keys (selection and request keys expire by TTL).
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  tasks per task chunk
-- Reply: {'ok'} | {'err', kind, msg}
local meta, prefix = KEYS[1], ARGV[2]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
local tasks = tonumber(redis.call('HGET', meta, 'task_count'))
local chunk = tonumber(ARGV[3])
for c = 0, math.floor((tasks + chunk - 1) / chunk) - 1 do
  redis.call('DEL', prefix .. 'tasks:' .. c)
end
redis.call('DEL', meta, prefix .. 'ckpt', prefix .. 'log', prefix .. 'open', prefix .. 'runs')
return {'ok'}
