-- Pending entries per class (interactive, standard, batch), leased, dead. Counting classes
-- walks the pending list (its elements start with their rank): metrics and health only.
local counts = { 0, 0, 0 }
local from = 0
while true do
  local chunk = redis.call('LRANGE', PENDING, from, from + 1023)
  if #chunk == 0 then
    break
  end
  for _, e in ipairs(chunk) do
    local r = tonumber(string.sub(e, 1, 1)) + 1
    counts[r] = counts[r] + 1
  end
  from = from + 1024
end
return { counts[1], counts[2], counts[3], redis.call('HLEN', CLAIMS), redis.call('LLEN', DEAD) }
