-- _common.lua: helpers prepended to every bots script (not a script of its own).
--
-- Key layout (see docs/redis.md): every key of a pool starts with
--   bots:v1:{<pool>}:
-- so that the whole pool lives in one Redis Cluster slot. `meta` is
-- bots:v1:{<pool>}:meta; every other key of a pool incarnation starts with
-- PREFIX = bots:v1:{<pool>}:<incarnation>: and is built here from PREFIX.
--
-- Replies: a table whose first element is a status string: 'ok', 'dup',
-- 'existing', or 'err' followed by an error kind and a message.

local function err(kind, msg)
  return {'err', kind, msg}
end

-- Returns an error reply unless the pool exists with this incarnation.
local function check_pool(meta, inc)
  local cur = redis.call('HGET', meta, 'incarnation')
  if not cur then return err('gone', 'pool does not exist') end
  if cur ~= inc then return err('stale', 'pool was re-created') end
  return nil
end

-- Appends one record to the pool's log; returns its sequence number.
local function append_log(meta, prefix, kind, payload)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  if kind == 'step' then redis.call('HINCRBY', meta, 'steps', 1) end
  redis.call('XADD', prefix .. 'log', seq .. '-1', 'k', kind, 'p', payload)
  return seq
end

-- Closes an open selection: its evidence becomes one 'step' log record, or
-- it is discarded when no task reported anything. Returns the new state.
local function close_selection(meta, prefix, n, retention)
  local sel = prefix .. 'sel:' .. n
  local blob = redis.call('HGET', sel, 'idx')
  local count = #blob / 4
  local entries = {}
  for p = 0, count - 1 do
    local i = struct.unpack('<I4', blob, p * 4 + 1)
    local e = redis.call('HGET', sel, 'e' .. i)
    if e then
      local s, t = struct.unpack('<dd', e)
      if t > 0 then entries[#entries + 1] = {i, s, t} end
    end
  end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  redis.call('ZREM', prefix .. 'open', n)
  redis.call('EXPIRE', sel, retention)
  if #entries == 0 then
    redis.call('HSET', sel, 'state', 'discarded')
    return 'discarded'
  end
  local parts = {}
  for k, e in ipairs(entries) do parts[k] = struct.pack('<I4dd', e[1], e[2], e[3]) end
  append_log(meta, prefix, 'step', table.concat(parts))
  redis.call('HSET', sel, 'state', 'applied')
  return 'applied'
end
