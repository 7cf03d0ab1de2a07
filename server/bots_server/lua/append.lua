-- append.lua: appends one record to a pool's log if the log is where the caller saw it.
-- KEYS[1]     meta hash of the pool
-- KEYS[2]     log stream of the incarnation
-- KEYS[3..]   task chunk keys to (re)write with the record (only when it adds tasks)
-- ARGV[1]     incarnation id the caller planned against
-- ARGV[2]     sequence number of the caller's last record (compare-and-set)
-- ARGV[3]     the encoded record
-- ARGV[4]     earliest open-selection deadline once the record is applied ('inf' if none)
-- ARGV[5]     task count once the record is applied
-- ARGV[6..]   task chunk contents, one per chunk key
-- Reply: {'ok', seq, ckpt_seq} | {'err', 'gone'}
--      | {'err', 'race', current_seq, entries} with up to 64 log entries after ARGV[2]
-- The pool runtime decided everything else; this only orders and stores.
local meta = KEYS[1]
local f = redis.call('HMGET', meta, 'incarnation', 'seq', 'ckpt_seq')
if f[1] ~= ARGV[1] then return {'err', 'gone'} end
if f[2] ~= ARGV[2] then
  local missed = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[2]) + 1) .. '-0', '+', 'COUNT', 64)
  return {'err', 'race', f[2], missed}
end
local seq = tonumber(f[2]) + 1
for j = 3, #KEYS do
  redis.call('SET', KEYS[j], ARGV[j + 3])
end
redis.call('XADD', KEYS[2], seq .. '-0', 'r', ARGV[3])
redis.call('HSET', meta, 'seq', seq, 'deadline', ARGV[4], 'task_count', ARGV[5])
return {'ok', seq, f[3]}
