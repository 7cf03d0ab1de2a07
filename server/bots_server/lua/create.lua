-- create.lua: creates a whole pool incarnation (CreatePool, ImportPosteriors), unless one exists.
-- KEYS[1]     meta hash of the pool
-- KEYS[2]     checkpoint hash of the new incarnation
-- KEYS[3..]   task chunk keys 0, 1, ... of the new incarnation
-- ARGV[1]     incarnation id
-- ARGV[2]     config as canonical JSON
-- ARGV[3]     task count
-- ARGV[4]     checkpoint image (record seq 0)
-- ARGV[5..]   task chunk contents, one per chunk key
-- Reply: {'ok'} | {'existing', incarnation, config_json}
-- The pool appears complete or not at all: everything is written here.
local meta = KEYS[1]
local cur = redis.call('HGET', meta, 'incarnation')
if cur then
  return {'existing', cur, redis.call('HGET', meta, 'config')}
end
for j = 3, #KEYS do
  redis.call('SET', KEYS[j], ARGV[j + 2])
end
redis.call('HSET', KEYS[2], 'seq', 0, 'image', ARGV[4])
redis.call('HSET', meta, 'incarnation', ARGV[1], 'config', ARGV[2], 'task_count', ARGV[3],
  'seq', 0, 'ckpt_seq', 0, 'deadline', 'inf')
return {'ok'}
