-- Publish one message to one channel, atomically.
-- KEYS[1] meta hash (e = epoch, o = newest offset, t = newest's time), KEYS[2] history stream
-- ARGV[1] epoch to use if the channel has none (or must start a new one)
-- ARGV[2] history size (0 = keep none)          ARGV[3] history ttl ms (0 = keep none)
-- ARGV[4] meta ttl ms                            ARGV[5] pub/sub topic
-- ARGV[6] message tail (flags, from, payload)
-- ARGV[7] the publishing node's watermark epoch ('' = none), ARGV[8] its offset, ARGV[9] that
--         message's time: the newest position of this channel the node has seen. A newest
--         offset below it in the same epoch, or equal to it with another time, means Redis
--         went back (a promoted replica that missed writes, an old snapshot): the next offset
--         may already name another message, so a new epoch starts instead (see fence.rs).
-- Returns {epoch, offset, ts, 1 when the watermark started a new epoch else 0}.
local epoch = redis.call('HGET', KEYS[1], 'e')
local fenced = 0
if epoch and epoch == ARGV[7] then
  local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
  local seen = tonumber(ARGV[8])
  if top < seen then
    epoch = nil
  elseif top == seen then
    local t = redis.call('HGET', KEYS[1], 't')
    if t and t ~= ARGV[9] then
      epoch = nil
    end
  end
  if not epoch then
    fenced = 1
  end
end
if not epoch then
  -- A new generation: whatever stream is left belongs to a lost one.
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('DEL', KEYS[2])
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local t = redis.call('TIME')
local ts = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local msg = 'p|' .. epoch .. '|' .. string.format('%d', offset) .. '|' .. ts .. '|' .. ARGV[6]
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if size > 0 and ttl > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, string.format('%d', offset) .. '-0', 'd', msg)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('HSET', KEYS[1], 't', ts)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], msg)
return {epoch, offset, ts, fenced}
