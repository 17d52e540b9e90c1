-- ARGV: 1 now ms, 2 lease deadline ms, 3 max, 4 lease id prefix, 5 worker id ('' = none),
-- 6 gpu ('1'/'0'), 7 backends JSON array, 8 models JSON array.
-- Leases up to max pending entries the worker may run whose not_before has passed, walking
-- the pending list in claim order; returns the leased entries' JSON in that order.
local now, max = tonumber(ARGV[1]), tonumber(ARGV[3])
local worker, gpu = ARGV[5], ARGV[6] == '1'
local function set(json)
  local s = {}
  for _, v in ipairs(cjson.decode(json)) do
    s[v] = true
  end
  return s
end
local backends, models = set(ARGV[7]), set(ARGV[8])

-- Requirements::admit.
local function admit(rec)
  return (not rec.gpu or gpu)
    and (not present(rec.backend) or backends[rec.backend] == true)
    and (not present(rec.model) or models[rec.model] == true or models['*'] == true)
    and (not present(rec.target) or rec.target == worker)
end

local picked = {}
local from = 0
while #picked < max do
  local chunk = redis.call('LRANGE', PENDING, from, from + 255)
  if #chunk == 0 then
    break
  end
  local members = {}
  for i, e in ipairs(chunk) do
    members[i] = string.sub(e, 18)
  end
  local raws = redis.call('HMGET', ENTRIES, unpack(members))
  for i, raw in ipairs(raws) do
    if raw then
      local rec = cjson.decode(raw)
      if tonumber(rec.not_before) <= now and admit(rec) then
        picked[#picked + 1] = { members[i], rec }
        if #picked >= max then
          break
        end
      end
    end
  end
  from = from + 256
end

local out = {}
for i, p in ipairs(picked) do
  local member, rec = p[1], p[2]
  unfile(member, rec)
  rec.attempt = rec.attempt + 1
  rec.state = 'leased'
  rec.lease_id = ARGV[4] .. string.format('%d-%019d', rec.priority, rec.seq)
  if worker ~= '' then
    rec.worker = worker
  else
    rec.worker = nil
  end
  rec.expires = ARGV[2]
  file(member, rec)
  out[i] = cjson.encode(rec)
end
return out
