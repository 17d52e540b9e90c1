-- ARGV: members. Per member, 1 when the queue holds an entry for the task (in any state).
local out = {}
for i = 1, #ARGV do
  out[i] = redis.call('HEXISTS', ENTRIES, ARGV[i])
end
return out
