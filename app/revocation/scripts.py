"""The Lua scripts the revocation store runs in Redis (one EVALSHA each, atomic there).

Each touches only the keys it is given, so on Redis Cluster it runs where they live when
they share a bucket (app.revocation.keys); where a time is compared, it is Redis's own
clock (TIME), the one every app instance shares.
"""

# Is this token revoked? Only if it is not: count it against its user's rate limit, and, when
# it was issued ahead of Redis's clock (an issuer clock running fast, within the leeway),
# remember it by name: a user revocation made before its `iat` must still cover it, without
# moving the user's cutoff (which would refuse the next tokens of issuers whose clocks are right).
# KEYS: the state key of each bucket read; the keys that deny the token when present; with a
#       user part: the user's cutoff, tokens ahead and tokens skewed; with a count: the counter
# ARGV: number of state keys, number of deny keys, "1" with a user part, iat, the token's name
#       (jti:... or tok:...), its last valid time, seconds until then, counter ttl ("" = none)
# Returns {0, i} when state key i is missing (that bucket lost its data), else
#         {1, revoked (0/1), count, state 1, state 2, ...}.
CHECK = """
local n_state, n_deny = tonumber(ARGV[1]), tonumber(ARGV[2])
local reply = {1, 0, 0}
for i = 1, n_state do
  local state = redis.call('GET', KEYS[i])
  if not state then return {0, i} end
  reply[#reply + 1] = state
end
local revoked = false
for i = n_state + 1, n_state + n_deny do
  if redis.call('EXISTS', KEYS[i]) == 1 then revoked = true end
end
local k = n_state + n_deny
local iat = tonumber(ARGV[4])
local user = ARGV[3] == '1'
if user then
  local cutoff = redis.call('GET', KEYS[k + 1])
  if cutoff and iat <= tonumber(cutoff) then revoked = true end
  if redis.call('ZSCORE', KEYS[k + 3], ARGV[5]) then revoked = true end
end
if revoked then
  reply[2] = 1
  return reply
end
if user then
  local clock = redis.call('TIME')
  if iat > tonumber(clock[1]) + tonumber(clock[2]) / 1000000 then
    redis.call('ZADD', KEYS[k + 2], ARGV[6], ARGV[5])
    if redis.call('TTL', KEYS[k + 2]) < tonumber(ARGV[7]) then redis.call('EXPIRE', KEYS[k + 2], ARGV[7]) end
  end
  k = k + 3
end
if ARGV[8] ~= '' then
  local count = redis.call('INCR', KEYS[k + 1])
  if count == 1 then redis.call('EXPIRE', KEYS[k + 1], ARGV[8]) end
  reply[3] = count
end
return reply
"""

# What a user revocation covers: every token issued up to Redis's clock now (the cutoff), and,
# by name, every token still valid that was accepted with an `iat` ahead of it.
# KEYS: the user's tokens ahead.
# Returns {cutoff, name, last valid time, name, last valid time, ...} (times as strings).
USER_CUTOFF = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local reply = {string.format('%.6f', now)}
for _, value in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do reply[#reply + 1] = value end
return reply
"""

# Apply revocations of one bucket.
# KEYS: the bucket's state key, then one key per entry.
# ARGV: mode, from, to, then per entry: op, value, score, ttl, where op is
#       set   SET key 1 (a token, a jti, a session)
#       max   SET key value unless it holds a greater one (a user's cutoff)
#       zadd  ZADD key score value (a token a user revocation covers by name)
# Modes:
#   ordered  the entries are every live revocation with a sequence in (from, to]: applied when
#            the state is `from`, which then becomes `to`. Returns {0, state} when applied or
#            already there, {2, state} when the state is behind `from` (the caller fills the
#            gap first), {1} when the state is missing (applied anyway: effective at once; the
#            bucket is rebuilt before anyone trusts it again).
#   load     applied whatever the state (a rebuild, under the bucket's repair lock). Returns {0}.
#   seal     no entries: the state becomes `to` (the rebuild is complete). Returns {0}.
APPLY = """
local mode = ARGV[1]
local state = redis.call('GET', KEYS[1])
if mode == 'seal' then
  redis.call('SET', KEYS[1], ARGV[3])
  return {0}
end
if mode == 'ordered' and state then
  if tonumber(state) >= tonumber(ARGV[3]) then return {0, state} end
  if tonumber(state) ~= tonumber(ARGV[2]) then return {2, state} end
end
for i = 2, #KEYS do
  local a = 4 * (i - 2) + 4
  local op, value, score, ttl = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if op == 'set' then
    redis.call('SET', KEYS[i], '1', 'EX', ttl)
  elseif op == 'max' then
    local current = redis.call('GET', KEYS[i])
    if not current or tonumber(current) < tonumber(value) then redis.call('SET', KEYS[i], value, 'EX', ttl) end
  else
    redis.call('ZADD', KEYS[i], score, value)
    if redis.call('TTL', KEYS[i]) < tonumber(ttl) then redis.call('EXPIRE', KEYS[i], ttl) end
  end
end
if mode == 'ordered' then
  if not state then return {1} end
  redis.call('SET', KEYS[1], ARGV[3])
  return {0, ARGV[3]}
end
return {0}
"""

# One request counted in a fixed window.  KEYS: counter.  ARGV: ttl.  Returns the count.
COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""

# A bucket's repair lock, released only by its holder.  KEYS: lock.  ARGV: holder.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

SCRIPTS = {"check": CHECK, "user_cutoff": USER_CUTOFF, "apply": APPLY, "count": COUNT, "release": RELEASE}
