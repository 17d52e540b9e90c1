-- ARGV: lease ids. Returns each held entry to pending at once, in its FIFO place, taking
-- back the attempt its claim counted.
for i = 1, #ARGV do
  local member, rec = take_leased(ARGV[i])
  if member then
    rec.attempt = math.max(rec.attempt - 1, 0)
    rec.state = 'pending'
    file(member, rec)
  end
end
return 0
