-- ARGV: 1 now ms, then pairs of lease id and reason. Moves each held entry to the end of the
-- dead letters.
for i = 2, #ARGV, 2 do
  local member, rec = take_leased(ARGV[i])
  if member then
    rec.state, rec.reason, rec.dead_at = 'dead', ARGV[i + 1], ARGV[1]
    file(member, rec)
  end
end
return 0
