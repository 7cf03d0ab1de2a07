-- create_pool.lua: creates a pool's meta and its empty checkpoint, unless it exists.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation (random id of this creation)
-- ARGV[2]  PREFIX of the incarnation's keys
-- ARGV[3]  config as canonical JSON
-- ARGV[4]  created-at timestamp (seconds)
-- Reply: {'ok', incarnation} | {'existing', incarnation, config_json}
local meta = KEYS[1]
local cur = redis.call('HGET', meta, 'incarnation')
if cur then
  return {'existing', cur, redis.call('HGET', meta, 'config')}
end
redis.call('HSET', meta, 'incarnation', ARGV[1], 'config', ARGV[3], 'task_count', 0,
  'seq', 0, 'steps', 0, 'selctr', 0, 'expired', 0, 'ckpt_seq', 0, 'created', ARGV[4])
redis.call('HSET', ARGV[2] .. 'ckpt', 'seq', 0, 'alpha', '', 'beta', '', 'state', '{}')
return {'ok', ARGV[1]}
