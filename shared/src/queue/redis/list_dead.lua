-- ARGV: 1 limit. The oldest dead letters' entry JSON (one consistent read).
local members = redis.call('LRANGE', DEAD, 0, tonumber(ARGV[1]) - 1)
if #members == 0 then
  return {}
end
local out = {}
for _, raw in ipairs(redis.call('HMGET', ENTRIES, unpack(members))) do
  if raw then
    out[#out + 1] = raw
  end
end
return out
