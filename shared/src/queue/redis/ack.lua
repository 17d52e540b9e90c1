-- ARGV: lease ids. Removes each held lease's entry for good.
for i = 1, #ARGV do
  local member = take_leased(ARGV[i])
  if member then
    redis.call('HDEL', ENTRIES, member)
  end
end
return 0
