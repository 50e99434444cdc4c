"""The Lua scripts the revocation store runs in Redis (one EVALSHA each, atomic there).

Each reads or writes only the keys it is given (so it runs on Redis Cluster too, when those
keys share a hash slot), and uses Redis's own clock (TIME) wherever a time is compared, so
every app instance judges against the same clock.
"""

# Is this token revoked? Only if it is not: count it against its user's rate limit, and, when
# it was issued ahead of Redis's clock (an issuer clock running fast, within the leeway),
# remember it by name: a user revocation made before its `iat` must still cover it, without
# moving the user's cutoff (and so refusing later tokens of issuers whose clocks are right).
# KEYS: marker, user cutoff, user's tokens ahead (sorted set), token key, [session key], [rate counter]
# ARGV: iat, the token's key name (jti:... or tok:...), its last valid time, its remaining
#       lifetime, "1" if a session key is given, rate counter ttl ("" = no counter)
# Returns {0} when the marker is missing (Redis lost its data), else {1, revoked, count}.
CHECK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local iat = tonumber(ARGV[1])
local revoked = redis.call('EXISTS', KEYS[4]) == 1
local cutoff = redis.call('GET', KEYS[2])
if cutoff and iat <= tonumber(cutoff) then revoked = true end
local next_key = 5
if ARGV[5] == '1' then
  if redis.call('EXISTS', KEYS[5]) == 1 then revoked = true end
  next_key = 6
end
if revoked then return {1, 1, 0} end
local clock = redis.call('TIME')
if iat > tonumber(clock[1]) + tonumber(clock[2]) / 1000000 then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
  if redis.call('TTL', KEYS[3]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
end
local count = 0
if ARGV[6] ~= '' then
  count = redis.call('INCR', KEYS[next_key])
  if count == 1 then redis.call('EXPIRE', KEYS[next_key], ARGV[6]) end
end
return {1, 0, count}
"""

# What a user revocation covers: every token issued up to Redis's clock now (the cutoff), and,
# by name, every token still valid that was accepted with an `iat` ahead of it.
# KEYS: user's tokens ahead.
# Returns {cutoff, name, last valid time, name, last valid time, ...} (times as strings).
USER_CUTOFF = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local reply = {string.format('%.6f', now)}
for _, value in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')) do reply[#reply + 1] = value end
return reply
"""

# Deny a user's tokens issued at or before a cutoff, never lowering one already there.
# KEYS: user cutoff.  ARGV: cutoff, ttl.  Returns the cutoff in force.
RAISE_CUTOFF = """
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then return current end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""

# The marker: the denylist has been loaded from the database (at this Redis time).
# KEYS: marker.
SET_MARKER = """
local clock = redis.call('TIME')
redis.call('SET', KEYS[1], string.format('%d.%06d', clock[1], clock[2]))
return 1
"""

# One request counted in a fixed window.  KEYS: counter.  ARGV: ttl.  Returns the count.
COUNT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""
