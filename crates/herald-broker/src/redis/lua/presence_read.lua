-- Live presence entries of a channel; drops the expired ones on the way.
-- KEYS[1] presence hash
-- Returns {entry json, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local expiry, json = string.match(all[i + 1], '^(%d+)|(.*)$')
  if expiry and tonumber(expiry) > now then
    live[#live + 1] = json
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
