-- report.lua: applies one report exactly once (dedup by request id in the same script).
-- KEYS[1]  meta hash of the pool
-- ARGV[1]  incarnation
-- ARGV[2]  PREFIX
-- ARGV[3]  request id
-- ARGV[4]  digest of the payload (selection id, outcomes, final)
-- ARGV[5]  selection number, or -1 for a standalone step
-- ARGV[6]  '1' to close the selection after this report
-- ARGV[7]  evidence: entries packed '<I4dd' (index, successes, trials), sorted by index
-- ARGV[8]  dedup time-to-live, seconds
-- ARGV[9]  retention of a closed selection, seconds
-- Reply: {'ok', state, steps_applied, steps} | {'dup', digest, state, steps_applied, steps}
--      | {'err', kind, msg}
-- Validates everything before the first write: scripts do not roll back.
local meta, prefix, rid, digest = KEYS[1], ARGV[2], ARGV[3], ARGV[4]
local n, final, ev = tonumber(ARGV[5]), ARGV[6] == '1', ARGV[7]
local bad = check_pool(meta, ARGV[1])
if bad then return bad end
local req = prefix .. 'req:' .. rid
local seen = redis.call('GET', req)
if seen then
  local d, st, ap, ver = string.match(seen, '^(%x+)|(%a+)|(%d+)|(%d+)$')
  if d ~= digest then return err('conflict', 'request id reused with a different payload') end
  return {'dup', st, ap, ver}
end
local count = #ev / 20
local state, applied = 'none', 0
if n < 0 then
  append_log(meta, prefix, 'step', ev)
  applied = 1
else
  local sel = prefix .. 'sel:' .. n
  local f = redis.call('HMGET', sel, 'state', 'idx', 'expected', 'remaining')
  if not f[1] then return err('no_selection', 'selection not found') end
  if f[1] ~= 'open' then return err('closed', 'selection is already closed') end
  local member = {}
  local blob = f[2]
  for p = 0, #blob / 4 - 1 do member[struct.unpack('<I4', blob, p * 4 + 1)] = true end
  local items = {}
  for k = 0, count - 1 do
    local i, s, t = struct.unpack('<I4dd', ev, k * 20 + 1)
    if not member[i] then return err('not_member', tostring(i)) end
    items[#items + 1] = {i, s, t}
  end
  local expected, remaining = tonumber(f[3]), tonumber(f[4])
  for _, it in ipairs(items) do
    local field = 'e' .. it[1]
    local old = redis.call('HGET', sel, field)
    local s0, t0 = 0, 0
    if old then s0, t0 = struct.unpack('<dd', old) end
    local t1 = t0 + it[3]
    redis.call('HSET', sel, field, struct.pack('<dd', s0 + it[2], t1))
    if t0 < expected and t1 >= expected then remaining = remaining - 1 end
  end
  redis.call('HSET', sel, 'remaining', remaining)
  if final or remaining <= 0 then
    state = close_selection(meta, prefix, n, tonumber(ARGV[9]))
    if state == 'applied' then applied = 1 end
  else
    state = 'open'
  end
end
local steps = redis.call('HGET', meta, 'steps')
redis.call('SET', req, digest .. '|' .. state .. '|' .. applied .. '|' .. steps, 'EX', ARGV[8])
return {'ok', state, applied, steps}
