-- checkpoint.lua: stores a pool image at record seq and trims the log behind it.
-- KEYS[1]     meta hash of the pool
-- KEYS[2]     checkpoint hash of the incarnation
-- KEYS[3]     log stream of the incarnation
-- ARGV[1]     incarnation id
-- ARGV[2]     record seq the image reflects
-- ARGV[3]     the image
-- Reply: {'ok', 1} stored | {'ok', 0} a newer checkpoint exists | {'err', 'gone'}
local meta, seq = KEYS[1], tonumber(ARGV[2])
local f = redis.call('HMGET', meta, 'incarnation', 'ckpt_seq')
if f[1] ~= ARGV[1] then return {'err', 'gone'} end
if seq <= tonumber(f[2]) then return {'ok', 0} end
redis.call('HSET', KEYS[2], 'seq', seq, 'image', ARGV[3])
redis.call('HSET', meta, 'ckpt_seq', seq)
redis.call('XTRIM', KEYS[3], 'MINID', (seq + 1) .. '-0')
return {'ok', 1}
