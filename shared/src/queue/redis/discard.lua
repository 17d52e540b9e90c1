-- ARGV: members. Drops each task's entry, whatever its state.
for i = 1, #ARGV do
  local rec = load(ARGV[i])
  if rec then
    unfile(ARGV[i], rec)
    redis.call('HDEL', ENTRIES, ARGV[i])
  end
end
return 0
