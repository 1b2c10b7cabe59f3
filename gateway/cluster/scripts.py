"""The Lua scripts that make the cluster's changes atomic in Redis.

Every key a script names lives under one hash tag, so the scripts also run on Redis Cluster.
Node records are read by name inside CLAIM and RELEASE (their liveness is the point of the
check); they share the hash tag, hence the slot. Definitions are JSON; `cjson` reads them.
"""

from __future__ import annotations

# KEYS: fns, place:<name>, epoch, events, tombs   ARGV: name, def, version, node, maxlen
# A replace wins only with a newer version than the one stored, so two concurrent replaces
# end with the higher version alone: its definition and its deployer as the only holder.
DEPLOY = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local v = cjson.decode(cur)['version']
  if v >= tonumber(ARGV[3]) then return {0, v} end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[5], ARGV[1])
local e = redis.call('INCR', KEYS[3])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], ARGV[4], e .. ':host')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'deploy', 'name', ARGV[1], 'node', ARGV[4])
return {1, e}
"""

# KEYS: fns, place:<name>, events, tombs   ARGV: name, node, maxlen
# The tombstone keeps a node that was away from bringing the deleted version back.
DELETE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[4], ARGV[1], cjson.decode(cur)['version'])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'delete', 'name', ARGV[1], 'node', ARGV[2])
return 1
"""

# KEYS: fns, place:<name>, epoch, events   ARGV: name, node, version, mode, max_replicas, node key prefix, maxlen
# Returns the claim's epoch (the fencing token), or 0 when the claim is refused: the version
# moved on, it is already claimed here, a live node holds it (rehome), or replicas are at the cap.
CLAIM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or cjson.decode(cur)['version'] ~= tonumber(ARGV[3]) then return 0 end
local holds = redis.call('HGETALL', KEYS[2])
local live, count = 0, 0
for i = 1, #holds, 2 do
  local n = holds[i]
  if n == ARGV[2] then return 0 end
  local rec = redis.call('GET', ARGV[6] .. n)
  if rec then
    count = count + 1
    if cjson.decode(rec)['state'] == 'up' then live = live + 1 end
  else
    redis.call('HDEL', KEYS[2], n)
  end
end
if ARGV[4] == 'rehome' and live > 0 then return 0 end
if ARGV[4] == 'replica' and count >= tonumber(ARGV[5]) then return 0 end
local e = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], ARGV[2], e .. ':loading')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'kind', 'claim', 'name', ARGV[1], 'node', ARGV[2])
return e
"""

# KEYS: fns, place:<name>, events   ARGV: name, node, epoch, version, maxlen
# Fencing: only the claim still standing with this epoch may say the image is in place.
CONFIRM = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur or cjson.decode(cur)['version'] ~= tonumber(ARGV[4]) then return 0 end
if redis.call('HGET', KEYS[2], ARGV[2]) ~= ARGV[3] .. ':loading' then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. ':host')
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'hold', 'name', ARGV[1], 'node', ARGV[2])
return 1
"""

# KEYS: place:<name>, events   ARGV: name, node, node key prefix, maxlen, force
# Never the last copy: another up node must hold the image (unless the function is gone: force).
RELEASE = """
if ARGV[5] ~= '1' then
  local holds = redis.call('HGETALL', KEYS[1])
  local others = 0
  for i = 1, #holds, 2 do
    local rec = redis.call('GET', ARGV[3] .. holds[i])
    if holds[i] ~= ARGV[2] and string.find(holds[i + 1], ':host') and rec and cjson.decode(rec)['state'] == 'up' then
      others = others + 1
    end
  end
  if others == 0 then return 0 end
end
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'kind', 'release', 'name', ARGV[1], 'node', ARGV[2])
return 1
"""

# KEYS: fns, place:<name>, epoch, events, tombs, version   ARGV: name, def, version, node, maxlen
# A node that (re)joins declares what it holds. Returns the hold's epoch, or -1 when the
# function was deleted or replaced meanwhile (the node drops its copy). After Redis lost its
# data, this is what writes the definitions back.
ADOPT = """
local v = tonumber(ARGV[3])
local tomb = redis.call('HGET', KEYS[5], ARGV[1])
if tomb and tonumber(tomb) >= v then return -1 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cjson.decode(cur)['version'] > v then return -1 end
if not cur or cjson.decode(cur)['version'] < v then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if tonumber(redis.call('GET', KEYS[6]) or '0') < v then redis.call('SET', KEYS[6], v) end
local h = redis.call('HGET', KEYS[2], ARGV[4])
if h and string.find(h, ':host') then return tonumber(string.match(h, '^(%d+)')) end
local e = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], ARGV[4], e .. ':host')
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'adopt', 'name', ARGV[1], 'node', ARGV[4])
return e
"""
