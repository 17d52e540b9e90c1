-- ARGV: pairs of lease id and retry time ms. Returns each held entry to pending, claimable
-- from the retry time, in its FIFO place; the delivery stays counted.
for i = 1, #ARGV, 2 do
  local member, rec = take_leased(ARGV[i])
  if member then
    rec.not_before = ARGV[i + 1]
    rec.state = 'pending'
    file(member, rec)
  end
end
return 0
