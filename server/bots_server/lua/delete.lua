-- delete.lua: deletes a pool incarnation and all its keys.
-- KEYS[1]     meta hash of the pool
-- KEYS[2]     checkpoint hash of the incarnation
-- KEYS[3]     log stream of the incarnation
-- KEYS[4..]   task chunk keys
-- ARGV[1]     incarnation id
-- ARGV[2]     task count the chunk keys were listed for
-- Reply: {'ok'} | {'err', 'gone'} | {'err', 'race'} (tasks were added meanwhile)
local meta = KEYS[1]
local f = redis.call('HMGET', meta, 'incarnation', 'task_count')
if f[1] ~= ARGV[1] then return {'err', 'gone'} end
if f[2] ~= ARGV[2] then return {'err', 'race'} end
redis.call('DEL', unpack(KEYS))
return {'ok'}
