-- Publish one message to one channel, atomically.
-- KEYS[1] meta hash (e = epoch, o = newest offset), KEYS[2] history stream
-- ARGV[1] epoch to use if the channel has none   ARGV[2] history size (0 = keep none)
-- ARGV[3] history ttl ms (0 = keep none)          ARGV[4] meta ttl ms
-- ARGV[5] pub/sub topic                           ARGV[6] message tail (flags, from, payload)
-- Returns {epoch, offset}.
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  -- A new generation: whatever stream is left belongs to a lost one.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local ts = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local msg = 'p|' .. epoch .. '|' .. string.format('%d', offset) .. '|' .. string.format('%d', ts) .. '|' .. ARGV[6]
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 and ttl > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, string.format('%d', offset) .. '-0', 'd', msg)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], msg)
return {epoch, offset}
