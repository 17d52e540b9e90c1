-- ARGV: 1 now ms, 2 delivery cap (SPLAI_REDIS_DEADLETTER_MAX; 0 = none). Ends every lease
-- whose deadline is at or before now, in (deadline, lease id) order: the entry is
-- dead-lettered once delivered min(max_attempts, cap) times, else requeued. Returns pairs of
-- the entry JSON as it was leased and 'dead' or 'requeued'.
local cap = tonumber(ARGV[2])
local out = {}
for _, lease in ipairs(redis.call('ZRANGEBYSCORE', VIS, '-inf', ARGV[1])) do
  local member, rec = take_leased(lease)
  if member then
    out[#out + 1] = cjson.encode(rec)
    local limit = rec.max_attempts
    if cap > 0 and cap < limit then
      limit = cap
    end
    if rec.attempt >= limit then
      rec.state, rec.reason, rec.dead_at = 'dead', 'lease expired', ARGV[1]
      out[#out + 1] = 'dead'
    else
      rec.state = 'pending'
      out[#out + 1] = 'requeued'
    end
    file(member, rec)
  else
    redis.call('ZREM', VIS, lease)
  end
end
return out
