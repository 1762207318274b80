"""The Lua scripts the store runs: each is one round trip and atomic, and reads the
store's own clock (`TIME`), so nodes on machines whose clocks differ still agree."""

# KEYS: lease sets; ARGV[1]: member, ARGV[2]: lifetime (ms), ARGV[3..]: each set's limit.
# All or none: 0 when the member now holds a lease in every set, else the 1-based index of
# the first set that is full. Expired members are dropped first.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZSCORE', key, ARGV[1]) == false and redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    return i
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return 0
"""

# KEYS: lease sets, ARGV[1]: lifetime (ms), ARGV[2..]: the member held in each set. Every
# lease this node holds is written again, also one the store lost (it restarted, or the
# node was away longer than a lifetime): the connection is open, so it counts.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return #KEYS
"""

# KEYS: lease sets; ARGV[1]: member. Returns how many sets still had it.
RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  n = n + redis.call('ZREM', key, ARGV[1])
end
return n
"""

# GCRA for a rate shared by all nodes, taken in batches. KEYS[1]: the rate's key;
# ARGV: emission interval (us), tolerance (us), slots wanted. The batch's slot i (from 0)
# conforms at (returned value) + i * interval microseconds from the store's now (negative:
# already). State: the theoretical arrival time in microseconds of the store's clock.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat < now then tat = now end
local new = tat + n * interval
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return tat - tonumber(ARGV[2]) - now
"""

# KEYS[1]: the nodes hash; ARGV[1]: this node, ARGV[2]: what it says about itself (JSON),
# ARGV[3]: seconds a node counts as live. Returns [store time (s), whether this node was
# on record (0: the store lost it, or this is the first beat), name, doc, ...] of every node,
# the heartbeat's own time stamped in; nodes silent for an hour are dropped.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local had = redis.call('HEXISTS', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local out = {now, had}
for i = 1, #all, 2 do
  local seen = tonumber(string.match(all[i + 1], '^(%d+)'))
  if seen == nil or now - seen > 3600 then
    redis.call('HDEL', KEYS[1], all[i])
  else
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
"""
