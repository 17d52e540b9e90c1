-- ARGV: entry JSONs. Upserts each as pending; a known task keeps its seq (FIFO place) and
-- loses any lease or dead-letter state. In input order, so a task listed twice ends as its
-- last listing.
for i = 1, #ARGV do
  local rec = cjson.decode(ARGV[i])
  local member = rec.job .. '|' .. rec.task
  local old = load(member)
  if old then
    unfile(member, old)
    rec.seq = old.seq
  else
    rec.seq = redis.call('INCR', SEQ)
  end
  rec.state = 'pending'
  file(member, rec)
end
return #ARGV
