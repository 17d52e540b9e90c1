-- Shared prelude of every queue script (prepended by redis.rs).
--
-- KEYS: 1 pending (list), 2 claims (hash lease -> member), 3 visibility (zset lease by
-- deadline ms), 4 dead (list of members), 5 entries (hash member -> entry JSON), 6 seq (counter).
--
-- A member is `<job>|<task>` ('|' is not allowed in ids). A pending element is the entry's
-- claim-order key, rank (1 digit) and seq (16 digits), followed by the member, so the list
-- stays sorted in claim order and a scan needs no entry lookups to find a place.
-- Timestamps travel as decimal strings of milliseconds and are only compared with tonumber,
-- so cjson's 14-digit number formatting never rounds them.
local PENDING, CLAIMS, VIS, DEAD, ENTRIES, SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

local function present(v)
  return v ~= nil and v ~= cjson.null
end

local function load(member)
  local raw = redis.call('HGET', ENTRIES, member)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

local function save(member, rec)
  redis.call('HSET', ENTRIES, member, cjson.encode(rec))
end

local function element(member, rec)
  return string.format('%d%016d', rec.priority, rec.seq) .. member
end

-- Whether pending element `e` comes before rank `r`, seq `s` in claim order.
local function before(e, r, s)
  local er, es = tonumber(string.sub(e, 1, 1)), tonumber(string.sub(e, 2, 17))
  return er < r or (er == r and es < s)
end

-- Inserts a pending entry at its claim-order place: the tail for the newest entry of the
-- lowest class present (the common enqueue), else before the first element after it.
-- LINSERT walks from the head, so the cost follows the position, as returning entries sit
-- near the head.
local function file_pending(member, rec)
  local el = element(member, rec)
  local tail = redis.call('LINDEX', PENDING, -1)
  if not tail or before(tail, rec.priority, rec.seq) then
    redis.call('RPUSH', PENDING, el)
    return
  end
  local from = 0
  while true do
    local chunk = redis.call('LRANGE', PENDING, from, from + 255)
    if #chunk == 0 then
      redis.call('RPUSH', PENDING, el)
      return
    end
    for _, e in ipairs(chunk) do
      if not before(e, rec.priority, rec.seq) then
        redis.call('LINSERT', PENDING, 'BEFORE', e, el)
        return
      end
    end
    from = from + 256
  end
end

-- Takes an entry out of the index of its state; the caller files it again or drops it.
local function unfile(member, rec)
  if rec.state == 'pending' then
    redis.call('LREM', PENDING, 1, element(member, rec))
  elseif rec.state == 'leased' then
    redis.call('HDEL', CLAIMS, rec.lease_id)
    redis.call('ZREM', VIS, rec.lease_id)
  elseif rec.state == 'dead' then
    redis.call('LREM', DEAD, 1, member)
  end
end

local function clear_lease(rec)
  rec.lease_id, rec.worker, rec.expires = nil, nil, nil
end

-- Files an entry in the index of its (new) state and saves it.
local function file(member, rec)
  if rec.state == 'pending' then
    clear_lease(rec)
    rec.reason, rec.dead_at = nil, nil
    file_pending(member, rec)
  elseif rec.state == 'leased' then
    redis.call('HSET', CLAIMS, rec.lease_id, member)
    redis.call('ZADD', VIS, rec.expires, rec.lease_id)
  else
    clear_lease(rec)
    redis.call('RPUSH', DEAD, member)
  end
  save(member, rec)
end

-- The leased entry behind `lease`, taken out of the lease indexes, or nil.
local function take_leased(lease)
  local member = redis.call('HGET', CLAIMS, lease)
  if not member then
    return nil
  end
  local rec = load(member)
  if not rec then
    redis.call('HDEL', CLAIMS, lease)
    redis.call('ZREM', VIS, lease)
    return nil
  end
  unfile(member, rec)
  return member, rec
end
