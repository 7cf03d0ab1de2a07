-- add_tasks.lua: appends tasks (compare-and-set on the task count) and logs the growth.
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  task count the caller built on (fails with 'race' if it moved)
-- ARGV[4]  new task count
-- ARGV[5]  number of the first task chunk written
-- ARGV[6..] the chunks' new contents (each replaces the whole chunk)
-- Reply: {'ok', seq} | {'err', kind, msg}
local meta, prefix = KEYS[1], ARGV[2]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
if redis.call('HGET', meta, 'task_count') ~= ARGV[3] then
  return err('race', 'task count changed')
end
local first = tonumber(ARGV[5])
for j = 6, #ARGV do
  redis.call('SET', prefix .. 'tasks:' .. (first + j - 6), ARGV[j])
end
redis.call('HSET', meta, 'task_count', ARGV[4])
local seq = append_log(meta, prefix, 'add', struct.pack('<I8', tonumber(ARGV[4])))
return {'ok', seq}
