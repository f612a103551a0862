-- Remove a client from a channel's presence; announce it if it was there.
-- KEYS[1] presence hash
-- ARGV[1] client id   ARGV[2] '1' = announce   ARGV[3] topic   ARGV[4] entry json
-- Returns 1 when a live entry was removed.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(string.match(old, '^(%d+)|') or '0') <= now then
  return 0
end
if ARGV[2] == '1' then
  redis.call('PUBLISH', ARGV[3], 'l' .. ARGV[4])
end
return 1
