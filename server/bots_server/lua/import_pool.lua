-- import_pool.lua: creates a pool from exported posteriors in one step, unless it exists.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  config as canonical JSON
-- ARGV[4]  created-at timestamp
-- ARGV[5]  task count
-- ARGV[6]  steps applied (from the export)
-- ARGV[7]  selections opened (from the export)
-- ARGV[8]  alpha, packed '<d' per task
-- ARGV[9]  beta, packed '<d' per task
-- ARGV[10] engine scalars as JSON
-- ARGV[11..] task chunks 0, 1, ...
-- Reply: {'ok'} | {'existing', incarnation, config_json}
local meta, prefix = KEYS[1], ARGV[2]
local cur = redis.call('HGET', meta, 'incarnation')
if cur then
  return {'existing', cur, redis.call('HGET', meta, 'config')}
end
for j = 11, #ARGV do
  redis.call('SET', prefix .. 'tasks:' .. (j - 11), ARGV[j])
end
redis.call('HSET', prefix .. 'ckpt', 'seq', 0, 'alpha', ARGV[8], 'beta', ARGV[9], 'state', ARGV[10])
redis.call('HSET', meta, 'incarnation', ARGV[1], 'config', ARGV[3], 'task_count', ARGV[5],
  'seq', 0, 'steps', ARGV[6], 'selctr', ARGV[7], 'expired', 0, 'ckpt_seq', 0, 'created', ARGV[4])
return {'ok'}
