-- index.lua: the history-index entries of a batch of writes, on Cluster only. There the
-- index lives in another slot than the result keys, which store.lua cannot reach, so
-- every batch of writes sends this once alongside its store scripts (the history's one
-- extra command). NX: an entry keeps the time of the first write that reached it.
-- Loaded from package data by scripts.py; the Cluster topology builds its arguments.
--
-- KEYS
--   [1] history index  string   P:history (sorted set: task id -> score)
-- ARGV
--   [1] history size   integer  the index keeps its newest this many entries
--   [2] task id        string   the first write's task id
--   [3] score          integer  its created_at in microseconds since the epoch
--   ... then a (task id, score) pair for each further write, as [2] and [3]
-- Returns how many entries were added (0 when every task was already listed).

local added = 0
for i = 2, #ARGV, 2 do
  added = added + redis.call('ZADD', KEYS[1], 'NX', ARGV[i + 1], ARGV[i])
end
if added > 0 then
  local size = tonumber(ARGV[1])
  local count = redis.call('ZCARD', KEYS[1])
  if count > size then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, count - size - 1) end
end
return added
