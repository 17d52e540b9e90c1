-- ARGV: 1 now ms, 2.. members. Revives each dead letter as pending from now with its attempt
-- count reset, in its old FIFO place. Returns 1 per revived member, 0 otherwise.
local out = {}
for i = 2, #ARGV do
  local rec = load(ARGV[i])
  if rec and rec.state == 'dead' then
    unfile(ARGV[i], rec)
    rec.attempt, rec.not_before, rec.state = 0, ARGV[1], 'pending'
    file(ARGV[i], rec)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
