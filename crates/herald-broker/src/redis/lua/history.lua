-- Read a channel's position and history. Read-only for a channel nobody published to: it
-- answers epoch '' and offset 0 and creates nothing (a read never makes state in Redis).
-- KEYS[1] meta hash, KEYS[2] history stream
-- ARGV[1] meta ttl ms (an existing channel's epoch is kept alive by its readers)
-- ARGV[2] '' = newest entries; '*' = entries after ARGV[3] in whatever epoch the channel has
--         (a reader whose position was taken before the channel had one); else the reader's
--         epoch (entries after ARGV[3] are read only when it is the channel's epoch)
-- ARGV[3] first stream id to read ('<offset>-0')  ARGV[4] most entries to read
-- ARGV[5] most bytes of entries to return (0: no bound; at least one entry is returned). The
--         stream is read in chunks of at most 16 entries, so no more than one chunk past the
--         bound is ever loaded.
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
local max_bytes = tonumber(ARGV[5])
local chunk = 16
-- Reads entries in `order` ('XRANGE' from `first`, or 'XREVRANGE' from the newest) while they
-- fit in max_bytes and limit; returns them in the order read.
local function read(order, first)
  local got, bytes, cursor = {}, 0, first
  while #got < limit do
    local want = math.min(chunk, limit - #got)
    local entries
    if order == 'XRANGE' then
      entries = redis.call('XRANGE', KEYS[2], cursor, '+', 'COUNT', want)
    else
      entries = redis.call('XREVRANGE', KEYS[2], cursor, '-', 'COUNT', want)
    end
    for i = 1, #entries do
      local entry = entries[i][2][2]
      if max_bytes > 0 and #got > 0 and bytes + #entry > max_bytes then
        return got
      end
      bytes = bytes + #entry
      got[#got + 1] = entry
    end
    if #entries < want then
      return got
    end
    cursor = '(' .. entries[#entries][1]
  end
  return got
end
local out = {}
if limit > 0 then
  if ARGV[2] == '' then
    local newest = read('XREVRANGE', '+')
    for i = #newest, 1, -1 do
      out[#out + 1] = newest[i]
    end
  elseif ARGV[2] == '*' or ARGV[2] == epoch then
    out = read('XRANGE', ARGV[3])
  end
end
return {epoch, top, now, out}
