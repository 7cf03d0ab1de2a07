-- checkpoint.lua: stores materialised posteriors at log position seq and trims the log.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  log position the arrays reflect
-- ARGV[4]  alpha, packed '<d' per task
-- ARGV[5]  beta, packed '<d' per task
-- ARGV[6]  engine scalars as JSON (task count, capability, steps, recent ETR)
-- Reply: {'ok', 1} when stored, {'ok', 0} when a newer checkpoint exists | {'err', ...}
local meta, prefix, seq = KEYS[1], ARGV[2], tonumber(ARGV[3])
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
if seq <= tonumber(redis.call('HGET', meta, 'ckpt_seq')) then return {'ok', 0} end
redis.call('HSET', prefix .. 'ckpt', 'seq', seq, 'alpha', ARGV[4], 'beta', ARGV[5], 'state', ARGV[6])
redis.call('HSET', meta, 'ckpt_seq', seq)
redis.call('XTRIM', prefix .. 'log', 'MINID', (seq + 1) .. '-0')
return {'ok', 1}
