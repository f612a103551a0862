-- Checks that a channel still holds a position a node has seen, and starts a new epoch when
-- it does not (Redis went back: a promoted replica that missed the newest writes, or an old
-- snapshot). Without this, the next publishes would reuse offsets that readers already hold
-- with other data, and they would drop the new messages as duplicates.
-- KEYS[1] meta hash, KEYS[2] history stream
-- ARGV[1] the seen epoch, ARGV[2] the seen offset, ARGV[3] the seen message's time (ms),
-- ARGV[4] the epoch to start, ARGV[5] '1' = force: the node saw the counter go back live, so
-- any channel still in that epoch regressed.
-- Regressed when the channel is in that epoch and its newest offset is below the seen one,
-- or the message at the seen offset (the newest, or still in the stream) has another time.
-- Returns {1, newest offset, newest's time or -1} when it started a new epoch (what Redis held,
-- for the log), {0} otherwise. Creates nothing for a channel without
-- meta (no epoch: the next publish starts one anyway).
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch ~= ARGV[1] then
  return {0}
end
local seen = tonumber(ARGV[2])
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local regressed = false
if ARGV[5] == '1' or top < seen then
  regressed = true
elseif top == seen then
  local t = redis.call('HGET', KEYS[1], 't')
  regressed = t ~= false and t ~= ARGV[3]
else
  local id = string.format('%d', seen) .. '-0'
  local entries = redis.call('XRANGE', KEYS[2], id, id)
  if #entries == 1 then
    local msg = entries[1][2][2]
    local ts = string.match(msg, '^p|[^|]*|%d+|(%d+)|')
    regressed = ts ~= nil and ts ~= ARGV[3]
  end
end
if not regressed then
  return {0}
end
local t = tonumber(redis.call('HGET', KEYS[1], 't') or '') or -1
redis.call('HSET', KEYS[1], 'e', ARGV[4], 'o', 0)
redis.call('HDEL', KEYS[1], 't')
redis.call('DEL', KEYS[2])
return {1, top, t}
