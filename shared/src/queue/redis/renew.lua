-- ARGV: 1 new deadline ms, 2.. lease ids. Returns 1 per lease still held (and extended), 0
-- otherwise, in input order.
local out = {}
for i = 2, #ARGV do
  local lease = ARGV[i]
  local member = redis.call('HGET', CLAIMS, lease)
  local rec = member and load(member)
  if rec and rec.state == 'leased' and rec.lease_id == lease then
    rec.expires = ARGV[1]
    redis.call('ZADD', VIS, ARGV[1], lease)
    save(member, rec)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
