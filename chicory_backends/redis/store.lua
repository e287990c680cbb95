-- store.lua: one write of a task's document (set_state or store_result), as one atomic
-- step: the guard, the merge, SET with the TTL, the history-index entry and PUBLISH.
-- Loaded from package data by scripts.py; scripts.store_write builds its arguments.
--
-- KEYS
--   [1] result key     string   P:result:<task_id>: the task's JSON document
--   [2] history index  string   P:history (sorted set), given on a single node and
--                               Sentinel when history_size > 0; never on Cluster, where
--                               it lives in another slot and index.lua adds the entry
-- ARGV
--   [1] state          string   the written TaskState ("PENDING" ... "DEAD_LETTERED")
--   [2] document       string   the write's JSON document, nulls left out
--                               (codec.encode_document)
--   [3] ttl            integer  seconds the document lives after this write; 0 = forever
--   [4] channel        string   P:done: the task id is PUBLISHed there when the written
--                               state is terminal
--   [5] task id        string   the task's id
--   [6] kind           string   types.WriteKind: "r" RESULT (store_result: replaces
--                               result, error, traceback), "s" STATE (set_state: keeps them)
--   [7] score          integer  the index entry's score: created_at in microseconds since
--                               the epoch
--   [8] history size   integer  the index keeps its newest this many entries
--   [9] shape          string   "c": write the merged document Chicory-shaped
--                               (write_chicory_format); "": ours
-- Returns 0 when the guard refused the write, 1 when written, 2 when written but the
-- PUBLISH was refused (an ACL denying the channel: waiters rely on their re-check).
--
-- The guard: a terminal write always lands and a non-terminal one only over a
-- non-terminal document, and never a write of an older attempt (missing = 0); a refused
-- write changes nothing. A write that lands merges by the rules of the SQL backends
-- (sql/dialects.py FILL_COLUMNS, KEEP_COLUMNS, _may_write), with created_at a fill as
-- well (SQL sets it at the insert only): fills keep the stored value when there is one,
-- else take the new one; keeps take the new value unless it is missing; the rest is
-- replaced. The tables below equal types.TERMINAL_STATES and those rules
-- (tests/unit/test_redis_scripts.py).
--
-- Chicory-shaped documents ("task_id" present: Chicory's own, or ours written for it,
-- chicory_format.is_chicory_shaped) keep the value as plain JSON, which cjson must never
-- re-encode (it keeps 14 significant digits and turns [] into {}). ``load`` cuts its text
-- out instead, between the first ',"result":' and the last ',"error":' (both shapes put
-- "result", "error", "traceback" last; a string's quotes are escaped, so neither can
-- match inside one), and the merge carries it as our JSON text. So a write of ours over
-- Chicory's document merges with it like with ours (its state is guarded, its result kept
-- by set_state, replaced by store_result), and comes out ours unless ARGV[9] says "c".
--
-- GET, merge, SET, ZADD and PUBLISH run as one script, so no late write can slip between
-- them and a waiter that reads a non-terminal state is sure to be sent the terminal one.
-- The index entry is added when the write creates the document (or gives created_at to a
-- document written before the history), and the index trimmed to its newest ARGV[8].
-- PUBLISH goes through pcall: a user whose ACL denies the channel still stores results.

local terminal = {["DEAD_LETTERED"] = true, ["FAILURE"] = true, ["SUCCESS"] = true}
local fill, keep = {"name", "queue", "enqueued_at", "args", "created_at"}, {"worker_id", "started_at"}
local replaced, by_result = {"state", "attempts", "updated_at", "finished_at"}, {"result", "error", "traceback"}
local state, doc, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local null = cjson.null
local function present(value) return value ~= nil and value ~= null end
local function load(text)
  local ok, fields = pcall(cjson.decode, text)
  if not ok or type(fields) ~= 'table' then return nil end
  if fields.task_id ~= nil then
    fields.task_id, fields.result = nil, nil
    local from = string.find(text, ',"result":', 1, true)
    local to = from and string.find(text, ',"error":', from, true)
    local later = to
    while later do
      to, later = later, string.find(text, ',"error":', later + 1, true)
    end
    local raw = to and string.sub(text, from + 10, to - 1)
    if raw and raw ~= 'null' then fields.result = raw end
  end
  return fields
end
local function chicory_shaped(fields)
  local value, err, tb = fields.result, fields.error, fields.traceback
  fields.result, fields.error, fields.traceback, fields.task_id = nil, nil, nil, ARGV[5]
  local head = cjson.encode(fields)
  return string.sub(head, 1, -2) .. ',"result":' .. (present(value) and value or 'null')
    .. ',"error":' .. cjson.encode(present(err) and err or null)
    .. ',"traceback":' .. cjson.encode(present(tb) and tb or null) .. '}'
end
local new = load(doc)
local current = nil
local old = redis.call('GET', KEYS[1])
if old then current = load(old) end
local written, created = true, true
if current then
  created = not present(current.created_at)
  local stored = tonumber(current.attempts) or 0
  written = (terminal[state] or not terminal[current.state])
    and (tonumber(new.attempts) or 0) >= stored
  if written then
    for _, name in ipairs(fill) do
      if not present(current[name]) then current[name] = new[name] end
    end
    for _, name in ipairs(keep) do
      if present(new[name]) then current[name] = new[name] end
    end
    for _, name in ipairs(replaced) do current[name] = new[name] end
    if ARGV[6] == 'r' then
      for _, name in ipairs(by_result) do current[name] = new[name] end
    end
    doc = ARGV[9] == 'c' and chicory_shaped(current) or cjson.encode(current)
  end
end
if written and created and KEYS[2] then
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[5])
  local size = tonumber(ARGV[8])
  local count = redis.call('ZCARD', KEYS[2])
  if count > size then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, count - size - 1) end
end
if not written then return 0 end
if ttl > 0 then
  redis.call('SET', KEYS[1], doc, 'EX', ttl)
else
  redis.call('SET', KEYS[1], doc)
end
if terminal[state] and ARGV[4] then
  local sent = redis.pcall('PUBLISH', ARGV[4], ARGV[5])
  if type(sent) == 'table' and sent.err then return 2 end
end
return 1
