-- Add (or refresh) clients in channels' presence hashes; announce the new ones.
-- KEYS[i] presence hash of entry i
-- ARGV[1] entry ttl ms   ARGV[2] '1' = announce joins
-- then per entry i: ARGV[3i] client id, ARGV[3i+1] entry json, ARGV[3i+2] topic
-- A value is '<expiry ms>|<entry json>'; an expired value counts as absent.
-- Returns the number of entries that were absent.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local added = 0
for i = 1, #KEYS do
  local client, json, topic = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local old = redis.call('HGET', KEYS[i], client)
  local fresh = not old or tonumber(string.match(old, '^(%d+)|') or '0') <= now
  redis.call('HSET', KEYS[i], client, string.format('%d', now + ttl) .. '|' .. json)
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
  if fresh then
    added = added + 1
    if ARGV[2] == '1' then
      redis.call('PUBLISH', topic, 'j' .. json)
    end
  end
end
return added
