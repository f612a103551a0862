-- Read a channel's position and history; create its epoch if it has none, so a reader gets a
-- cursor before the first publish and that publish keeps the same epoch.
-- KEYS[1] meta hash, KEYS[2] history stream
-- ARGV[1] epoch to use if the channel has none   ARGV[2] meta ttl ms
-- ARGV[3] '' = newest entries, else the reader's epoch (entries after ARGV[4] are read only
--         when it is the channel's epoch)
-- ARGV[4] first stream id to read ('<offset>-0')  ARGV[5] most entries to read
-- Returns {epoch, newest offset, now ms, {entry, ...}} (entries oldest first).
local epoch = redis.call('HGET', KEYS[1], 'e')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {epoch, 0, now, {}}
end
-- A reader keeps an idle channel's epoch alive.
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local limit = tonumber(ARGV[5])
local out = {}
if limit > 0 then
  local entries = nil
  if ARGV[3] == '' then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
    for i = #entries, 1, -1 do
      out[#out + 1] = entries[i][2][2]
    end
  elseif ARGV[3] == epoch then
    entries = redis.call('XRANGE', KEYS[2], ARGV[4], '+', 'COUNT', limit)
    for i = 1, #entries do
      out[i] = entries[i][2][2]
    end
  end
end
return {epoch, top, now, out}
