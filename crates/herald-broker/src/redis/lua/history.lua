-- Read a channel's position and history. Read-only for a channel nobody published to: it
-- answers epoch '' and offset 0 and creates nothing (a read never makes state in Redis).
-- KEYS[1] meta hash, KEYS[2] history stream
-- ARGV[1] meta ttl ms (an existing channel's epoch is kept alive by its readers)
-- ARGV[2] '' = newest entries; '*' = entries after ARGV[3] in whatever epoch the channel has
--         (a reader whose position was taken before the channel had one); else the reader's
--         epoch (entries after ARGV[3] are read only when it is the channel's epoch)
-- ARGV[3] first stream id to read ('<offset>-0')  ARGV[4] most entries to read
-- Returns {epoch, newest offset, now ms, {entry, ...}} (entries oldest first).
local epoch = redis.call('HGET', KEYS[1], 'e')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if not epoch then
  return {'', 0, now, {}}
end
-- A reader keeps an idle channel's epoch alive (an existing key only: nothing is created).
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local limit = tonumber(ARGV[4])
local out = {}
if limit > 0 then
  local entries = nil
  if ARGV[2] == '' then
    entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', limit)
    for i = #entries, 1, -1 do
      out[#out + 1] = entries[i][2][2]
    end
  elseif ARGV[2] == '*' or ARGV[2] == epoch then
    entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', limit)
    for i = 1, #entries do
      out[i] = entries[i][2][2]
    end
  end
end
return {epoch, top, now, out}
