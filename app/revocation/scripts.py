"""The Lua scripts the revocation store runs in Redis, one EVALSHA each, atomic there
(ARCHITECTURE.md, "The data")."""

# Is this token revoked? Only if it is not: count it against its user's rate limit, and, when
# it was issued ahead of Redis's clock (an issuer clock running fast, within the leeway),
# remember it by name, so that a user revocation made before its `iat` still covers it.
# KEYS: the hash of each bucket asked; when counting, the user's counter.
# ARGV: number of buckets, position of the user's bucket among them (0: none), iat, the token's
#       name, its last valid time, the counter's ttl ('' = no count), '1' when the token has a
#       sid, the user's covered-by-name field, the user's ahead field; then per bucket: its
#       numbers of deny fields (present: revoked), cutoff fields (iat at or before: revoked) and
#       sidless cutoff fields (the same, for a token without a sid), then those fields.
# Returns {0, i} when bucket i has no state (Redis lost it), else {1, revoked, count, states...}.
CHECK = """
local nb, user_at, iat = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reply, revoked, a = {1, 0, 0}, false, 10
local ahead_key, ahead
for i = 1, nb do
  local nd, nc, ns = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local fields = {'state'}
  for j = 0, nd + nc + ns - 1 do fields[j + 2] = ARGV[a + j] end
  a = a + nd + nc + ns
  if i == user_at then
    fields[#fields + 1] = ARGV[8]
    fields[#fields + 1] = ARGV[9]
  end
  local values = redis.call('HMGET', KEYS[i], unpack(fields))
  if not values[1] then return {0, i} end
  reply[#reply + 1] = values[1]
  for j = 2, nd + nc + ns + 1 do
    local value = values[j]
    if value then
      if j <= nd + 1 then
        revoked = true
      elseif (j <= nd + nc + 1 or ARGV[7] ~= '1') and iat <= tonumber(string.match(value, ' (%S+)$')) then
        revoked = true
      end
    end
  end
  if i == user_at then
    if values[nd + nc + ns + 2] then revoked = true end
    ahead_key, ahead = KEYS[i], values[nd + nc + ns + 3]
  end
end
if revoked then
  reply[2] = 1
  return reply
end
if ahead_key then
  local clock = redis.call('TIME')
  if iat > tonumber(clock[1]) + tonumber(clock[2]) / 1000000 then
    local name, last_valid = ARGV[4], tonumber(ARGV[5])
    if not ahead then
      redis.call('HSET', ahead_key, ARGV[9], ARGV[5] .. '\\n' .. name .. '\\t' .. ARGV[5])
    elseif not string.find(ahead, '\\n' .. name .. '\\t', 1, true) then
      local latest = math.max(tonumber(string.match(ahead, '^(%S+)')), last_valid)
      local rest = string.match(ahead, '^%S+(.*)$')
      redis.call('HSET', ahead_key, ARGV[9],
                 string.format('%.6f', latest) .. rest .. '\\n' .. name .. '\\t' .. ARGV[5])
    end
  end
end
if ARGV[6] ~= '' then
  local count = redis.call('INCR', KEYS[nb + 1])
  if count == 1 then redis.call('EXPIRE', KEYS[nb + 1], ARGV[6]) end
  reply[3] = count
end
return reply
"""

# What a user revocation covers: every token issued up to Redis's clock now (the cutoff), and,
# by name, every token still valid that was accepted with an `iat` ahead of it.
# KEYS: the user's bucket.  ARGV: the user's ahead field.
# Returns {cutoff, name, last valid time, name, last valid time, ...} (times as strings).
USER_CUTOFF = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local reply = {string.format('%.6f', now)}
local ahead = redis.call('HGET', KEYS[1], ARGV[1])
if ahead then
  for name, last_valid in string.gmatch(ahead, '\\n([^\\t\\n]+)\\t([^\\n]+)') do
    if tonumber(last_valid) > now then
      reply[#reply + 1] = name
      reply[#reply + 1] = last_valid
    end
  end
end
return reply
"""

# Apply revocations of one bucket.
# KEYS: the bucket's hash.
# ARGV: mode, from, to, then entries of three: op, field, value. Every value starts with the
#       time after which it denies nothing.
#   d  a denial (a jti, a session, a token, a token covered by name): the later expiry is kept
#   c  a cutoff ("expiry cutoff"): the later cutoff and the later expiry are kept
#   l  the log entry of one revocation ("expiry record"): a different entry under the same
#      name is a conflict (the table gave a sequence Redis already holds to another revocation)
# Modes:
#   ordered  the entries are every live revocation with a sequence in (from, to]. They are
#            written whatever the state (a revocation is enforced at once), and the state moves
#            to `to` when it is at least `from`.
#            Returns {0, state} applied (or already there), {1, ''} no state (Redis lost the
#            bucket), {2, state} behind `from` (the caller repairs the gap); followed by the
#            field and Redis's own entry of the first conflicting log entry, if any.
#   A rebuild, in three modes where `from` is the `rebuild` field's expected value: the holder
#   and the pages written so far (`<holder>#<pages>`), so that a bucket lost (evicted, flushed)
#   or rolled back (to before one of its pages) in the middle is never sealed.
#   start    the first page: the `rebuild` field set to `from`, the entries written.
#   load     a later page: if the `rebuild` field is `from`, it becomes `to` and the entries
#            are written.
#   seal     no entries: if the `rebuild` field is `from`, it goes and the state becomes `to`
#            unless it is ahead.
#   Each returns {0} (seal: {0, state}), or {1, ''} when the `rebuild` field is not `from` (the
#   bucket was lost or rolled back, or another rebuild began): the caller starts again.
APPLY = """
local mode = ARGV[1]
local key = KEYS[1]
if mode == 'start' then
  redis.call('HSET', key, 'rebuild', ARGV[2])
elseif (mode == 'load' or mode == 'seal') and redis.call('HGET', key, 'rebuild') ~= ARGV[2] then
  return {1, ''}
elseif mode == 'load' then
  redis.call('HSET', key, 'rebuild', ARGV[3])
end
if mode == 'seal' then
  redis.call('HDEL', key, 'rebuild')
  local state = redis.call('HGET', key, 'state')
  if not state or tonumber(state) < tonumber(ARGV[3]) then redis.call('HSET', key, 'state', ARGV[3]) end
  return {0, redis.call('HGET', key, 'state')}
end
local conflict
for i = 4, #ARGV, 3 do
  local op, field, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', key, field)
  if op == 'l' then
    if not current then
      redis.call('HSET', key, field, value)
    elseif current ~= value and mode == 'ordered' and not conflict then
      conflict = {field, current}
    end
  elseif op == 'd' then
    if not current or tonumber(string.match(current, '^(%S+)')) < tonumber(value) then
      redis.call('HSET', key, field, value)
    end
  else
    if not current then
      redis.call('HSET', key, field, value)
    else
      local e1, c1 = string.match(current, '^(%S+) (%S+)$')
      local e2, c2 = string.match(value, '^(%S+) (%S+)$')
      if tonumber(e1) < tonumber(e2) then e1 = e2 end
      if tonumber(c1) < tonumber(c2) then c1 = c2 end
      redis.call('HSET', key, field, e1 .. ' ' .. c1)
    end
  end
end
if mode ~= 'ordered' then return {0} end
local state = redis.call('HGET', key, 'state')
local reply
if not state then
  reply = {1, ''}
elseif tonumber(state) < tonumber(ARGV[2]) then
  reply = {2, state}
else
  if tonumber(state) < tonumber(ARGV[3]) then
    redis.call('HSET', key, 'state', ARGV[3])
    state = ARGV[3]
  end
  reply = {0, state}
end
if conflict then
  reply[3], reply[4] = conflict[1], conflict[2]
end
return reply
"""

# Delete, from one bucket, fields that can deny nothing any more: a step of HSCAN from where the
# last sweep stopped (the `sweep` field).  KEYS: the bucket.  ARGV: fields per step, a time:
# entries whose expiry is before it go.  Returns the number deleted.
SWEEP = """
local key = KEYS[1]
if redis.call('HEXISTS', key, 'state') == 0 then return 0 end
local cursor = redis.call('HGET', key, 'sweep') or '0'
local result = redis.call('HSCAN', key, cursor, 'COUNT', ARGV[1])
local before, deleted = tonumber(ARGV[2]), 0
local entries = result[2]
for i = 1, #entries, 2 do
  local field = entries[i]
  if field ~= 'state' and field ~= 'sweep' and field ~= 'rebuild' then
    local expiry = tonumber(string.match(entries[i + 1], '^(%S+)'))
    if expiry and expiry < before then
      deleted = deleted + redis.call('HDEL', key, field)
    end
  end
end
redis.call('HSET', key, 'sweep', result[1])
return deleted
"""

# A bucket's repair lock, released only by its holder.  KEYS: lock.  ARGV: holder.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The same lock kept for another lease period by its holder.  KEYS: lock.  ARGV: holder, milliseconds.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

SCRIPTS = {"check": CHECK, "user_cutoff": USER_CUTOFF, "apply": APPLY, "sweep": SWEEP, "release": RELEASE,
           "renew": RENEW}
