#!lua name=crew
-- The crew queue's Redis 7 function library (docs/architecture.md, "Redis queue"). Every function
-- takes one key, the queue prefix `crew:{<queue>}:`: its hash tag puts all of a queue's keys in one
-- Cluster slot, and jobs reached through the delayed zset and the held sets cannot be declared up
-- front anyway, so the functions derive every key from the prefix. All time is the Redis clock
-- (TIME).
-- Every state change checks the job's current state (and lease token), so each job is settled
-- exactly once however late or repeated a call is. Arguments are checked before the first write:
-- a function that raises after writing would leave its writes in place.

local VERSION = 10

local GROUP = 'workers'
local NOTIFY_MAXLEN = '10000'
-- A producer's results stream lives this long after its last notification unless the producer
-- renews it (its Queue does every few minutes while it lives): the stream of one that went away
-- for good is not kept for ever. Version 6 added it.
local RESULTS_TTL_MS = '3600000'
local MAX_BACKOFF_MS = 24 * 3600 * 1000
-- Upper bounds (ms) of the end-to-end latency histogram's buckets; a last bucket takes the rest.
-- Fixed, so that every worker and producer adds into the same buckets.
local LATENCY_BOUNDS = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
  300000}
local LATENCY_LABELS = {}
for i = 1, #LATENCY_BOUNDS do LATENCY_LABELS[i] = 'le:' .. LATENCY_BOUNDS[i] end

-- A bad argument raises a tagged table; `checked` turns it into a plain error reply (an error
-- raised from Lua would carry the script's line number instead).
local function reject(fn, message)
  error({crew_error = 'ERR ' .. fn .. ': ' .. message})
end

local function checked(impl)
  return function(keys, argv)
    local ok, result = pcall(impl, keys, argv)
    if ok then return result end
    if type(result) == 'table' and result.crew_error then
      return redis.error_reply(result.crew_error)
    end
    error(result)
  end
end

local function prefix_of(fn, keys)
  local p = keys[1]
  if #keys ~= 1 or type(p) ~= 'string' or not string.match(p, '^crew:{[^{}]+}:$') then
    reject(fn, "expects one key, the queue prefix 'crew:{<queue>}:'")
  end
  return p
end

local function text(fn, name, value, max)
  if type(value) ~= 'string' or #value == 0 or #value > max then
    reject(fn, name .. ' must be 1..' .. max .. ' bytes')
  end
  return value
end

-- Plain decimal digits only: the functions store a checked argument as it came, and Redis must
-- read it back as an integer (PEXPIRE, ZADD).
local function int(fn, name, value, min, max)
  local n = type(value) == 'string' and string.find(value, '^%d+$') and tonumber(value)
  if not n or n < min or n >= math.huge or (max and n > max) then
    reject(fn, name .. ' must be an integer in ' .. min .. '..' .. (max or 'inf') .. ", got '"
      .. tostring(value) .. "'")
  end
  return n
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Integers as text, made once: every number handed to redis.call is formatted with printf, which
-- was a tenth of the hot paths' time (perf of redis-server: printf_fp).
-- Small ones are kept; of the others only the last (a call's `now`, given for every job of it).
local small_texts, last_number, last_text = {}, nil, nil
local function digits(n)
  local v = small_texts[n]
  if v then return v end
  if n == last_number then return last_text end
  v = string.format('%d', n)
  if n >= 0 and n < 10000 then
    small_texts[n] = v
  else
    last_number, last_text = n, v
  end
  return v
end

local function job_key(p, id) return p .. 'job:' .. id end
-- The ids of the jobs `worker` runs; its lease deadline is its score in `leases`.
local function held_key(p, worker) return p .. 'held:' .. worker end

-- Renews `worker`'s lease (GT: a deadline never moves back).
local function lease_worker(p, worker, deadline)
  redis.call('ZADD', p .. 'leases', 'GT', deadline, worker)
end

-- The job leaves its owner's held set (version 7's jobs have no owner's set: nothing to do).
local function unhold(p, id, job)
  if job.owner then redis.call('SREM', held_key(p, job.owner), id) end
end

-- A job hash holds only what differs from these defaults (version 8): fewer fields make every
-- HMGET and HSET of a job cheaper, and a submission writes 7 fields instead of 17.
local DEFAULTS = {priority = '0', attempts = '1', attempt = '0', backoff = 'fixed',
  backoff_ms = '0', jitter = '0', timeout_ms = '0', retain_ms = '0', reclaims = '0'}
-- The options a submission stores when they are not the default: name, argument offset.
local OPTIONS = {{'attempts', 6}, {'backoff', 7}, {'backoff_ms', 8}, {'jitter', 9},
  {'timeout_ms', 10}, {'retain_ms', 11}}

-- A whole job, defaults filled in, and `stream`, its priority's stream; nil when there is none.
-- For the rarer paths: the hot ones read only the fields they use.
local function load_job(p, id)
  local flat = redis.call('HGETALL', job_key(p, id))
  if #flat == 0 then return nil end
  local job = {}
  for i = 1, #flat, 2 do job[flat[i]] = flat[i + 1] end
  for name, value in pairs(DEFAULTS) do
    if not job[name] then job[name] = value end
  end
  job.stream = p .. 'p' .. job.priority
  return job
end

local function bump(p, counter) redis.call('HINCRBY', p .. 'stats', counter, 1) end

-- Runs `head` followed by `items`, split so that no call takes more than 1 000 of them (unpack
-- has a limit, and one huge command would hold Redis as long as many).
local function call_with(head, items)
  for from = 1, #items, 1000 do
    local args = {unpack(head)}
    for i = from, math.min(from + 999, #items) do args[#args + 1] = items[i] end
    redis.call(unpack(args))
  end
end

-- Adds one entry to a producer's results stream. A stream that exists has its time to live (the
-- call that created it gave it one, and the producer renews it), so only a missing stream costs
-- more than the XADD: created, and given RESULTS_TTL_MS (NX: a living producer's own renewal is
-- not cut short).
local function add_result(key, fields)
  if redis.call('XADD', key, 'NOMKSTREAM', 'MAXLEN', '~', NOTIFY_MAXLEN, '*', unpack(fields)) then
    return
  end
  redis.call('XADD', key, 'MAXLEN', '~', NOTIFY_MAXLEN, '*', unpack(fields))
  redis.call('PEXPIRE', key, RESULTS_TTL_MS, 'NX')
end

-- What a call adds to the counter hashes, summed; the results it notifies, by results stream;
-- the jobs it settled, by owner, and the job hashes it deleted: written at its end (flush), one
-- command per hash, stream or key rather than per job. Every redis.call costs more than the work
-- of most commands here (its arguments and reply go through RESP and Lua), so a batch of outcomes
-- costs a few calls, not a few per job.
-- `done`: the jobs settled so far, so that an outcome repeated within one call is refused
-- although the writes that settle the first (the DEL, say) are still to come.
local function new_tally()
  return {stats = {}, latency = {}, results = {}, unlease = {}, del = {}, done = {}}
end

local function add(tally, hash, field, n) tally[hash][field] = (tally[hash][field] or 0) + n end

local function flush(p, tally)
  for _, hash in ipairs({'stats', 'latency'}) do
    for field, n in pairs(tally[hash]) do redis.call('HINCRBY', p .. hash, field, digits(n)) end
  end
  -- One entry carries several jobs' notifications, each a group of fields from its `id` on, at
  -- most 1 000 fields an entry.
  for key, fields in pairs(tally.results) do
    for from = 1, #fields, 996 do
      local entry = {}
      for i = from, math.min(from + 995, #fields) do entry[#entry + 1] = fields[i] end
      add_result(key, entry)
    end
  end
  call_with({'DEL'}, tally.del)
  for owner, ids in pairs(tally.unlease) do call_with({'SREM', held_key(p, owner)}, ids) end
end

-- Counts a completed job's end-to-end latency, from when it could first run (submission, or the
-- end of its delay) to its result, in the queue's histogram hash: bucket `le:<ms>` (`le:inf` for
-- the rest), plus `sum_ms`; its count is the `completed` counter (crew_stats reports it as
-- `latency:count`), one HINCRBY fewer per call. Redis time on both ends: no client clock is
-- involved.
local function observe_latency(tally, ready_ms, now)
  local ms = math.max(0, now - tonumber(ready_ms))
  local bucket = 'le:inf'
  for i, bound in ipairs(LATENCY_BOUNDS) do
    if ms <= bound then
      bucket = LATENCY_LABELS[i]
      break
    end
  end
  add(tally, 'latency', bucket, 1)
  add(tally, 'latency', 'sum_ms', ms)
end

-- A lease token is never reused: each start and reclaim takes the next number.
local function next_token(p) return tostring(redis.call('INCR', p .. 'seq')) end

local function enqueue(p, id, priority)
  local entry = redis.call('XADD', p .. 'p' .. priority, '*', 'id', id)
  redis.call('HSET', job_key(p, id), 'state', 'waiting', 'entry', entry)
end

-- A delayed job also wakes one blocked worker (the `wake` stream is read by the group too), so it
-- recomputes how long to block (crew_next_due) and promotes the job when it is due. Wake entries
-- carry nothing and are acknowledged at once, so trimming them loses nothing.
local function delay_job(p, id, due)
  redis.call('ZADD', p .. 'delayed', due, id)
  redis.call('XADD', p .. 'wake', 'MAXLEN', '~', '1000', '*', 'due', due)
end

-- Streams are never trimmed (Redis 7.0 trims pending entries too): an entry leaves its stream
-- in the same call that moves its job on.
local function drop_entry(stream, entry)
  if stream and entry and entry ~= '' then
    redis.call('XACK', stream, GROUP, entry)
    redis.call('XDEL', stream, entry)
  end
end

-- The entry of a job that started: crew_start acknowledged it already.
local function delete_entry(stream, entry)
  if stream and entry and entry ~= '' then redis.call('XDEL', stream, entry) end
end

local function notify(p, id, job, fields)
  local entry = {'id', id}
  for _, v in ipairs(fields) do entry[#entry + 1] = v end
  add_result(p .. 'results:' .. job.producer, entry)
end

local function retain(p, id, job)
  local ms = tonumber(job.retain_ms)
  if ms == 0 then
    redis.call('DEL', job_key(p, id))
  else
    redis.call('PEXPIRE', job_key(p, id), ms)
  end
end

local function dead_letter(p, id, task, error_type, message, attempts)
  redis.call('XADD', p .. 'dead', '*', 'id', id, 'task', task, 'error_type', error_type, 'error',
    message, 'attempts', attempts)
  bump(p, 'dead')
end

-- The job's last word: dead-lettered, its producer told, its hash kept for retain_ms.
local function settle_dead(p, id, job, error_type, message)
  drop_entry(job.stream, job.entry)
  unhold(p, id, job)
  redis.call('HSET', job_key(p, id), 'state', 'dead', 'error_type', error_type, 'error', message,
    'finished_ms', now_ms())
  dead_letter(p, id, job.task, error_type, message, job.attempt)
  notify(p, id, job, {'state', 'dead', 'error_type', error_type, 'error', message})
  retain(p, id, job)
end

local function owned(job, lease)
  return job and job.state == 'active' and job.lease == lease
end

-- Checks the 12 arguments of one submission from argv[at] on (see crew_submit); -> its priority
-- and delay as numbers. The others are stored as they came.
local function submission(fn, argv, at)
  text(fn, 'id', argv[at], 256)
  text(fn, 'producer', argv[at + 1], 256)
  text(fn, 'task', argv[at + 2], 256)
  local priority = int(fn, 'priority', argv[at + 4], 0, 3)
  local delay = int(fn, 'delay_ms', argv[at + 5], 0)
  int(fn, 'attempts', argv[at + 6], 1)
  local backoff = argv[at + 7]
  if backoff ~= 'fixed' and backoff ~= 'exponential' then
    reject(fn, "backoff must be 'fixed' or 'exponential', got '" .. tostring(backoff) .. "'")
  end
  int(fn, 'backoff_ms', argv[at + 8], 0)
  local jitter = tonumber(argv[at + 9])
  if not (jitter and jitter >= 0 and jitter <= 1) then  -- NaN fails every comparison
    reject(fn, "jitter must be a number in 0..1, got '" .. tostring(argv[at + 9]) .. "'")
  end
  int(fn, 'timeout_ms', argv[at + 10], 0)
  int(fn, 'retain_ms', argv[at + 11], 0)
  return priority, delay
end

-- Creates a checked submission's job (argv[at] on), or attaches to the job of that id:
-- -> {'created'|'exists', state}. A job that can run now gets its stream entry first, so that one
-- HSET writes its hash; options at their default are left out of it (DEFAULTS).
local function create(p, tally, now, argv, at, priority, delay)
  local id = argv[at]
  local key = job_key(p, id)
  local state = redis.call('HGET', key, 'state')
  if state then return {'exists', state} end
  add(tally, 'stats', 'submitted', 1)
  local hset
  if delay > 0 then
    hset = {'HSET', key, 'state', 'delayed'}
  else
    local entry = redis.call('XADD', p .. 'p' .. digits(priority), '*', 'id', id)
    hset = {'HSET', key, 'state', 'waiting', 'entry', entry}
  end
  local n = #hset
  hset[n + 1], hset[n + 2] = 'task', argv[at + 2]
  hset[n + 3], hset[n + 4] = 'args', argv[at + 3]
  hset[n + 5], hset[n + 6] = 'producer', argv[at + 1]
  hset[n + 7], hset[n + 8] = 'created_ms', digits(now)
  n = n + 8
  if priority ~= 0 then
    hset[n + 1], hset[n + 2] = 'priority', digits(priority)
    n = n + 2
  end
  for _, option in ipairs(OPTIONS) do
    local name, value = option[1], argv[at + option[2]]
    if value ~= DEFAULTS[name] then
      hset[n + 1], hset[n + 2] = name, value
      n = n + 2
    end
  end
  if delay > 0 then
    hset[n + 1], hset[n + 2] = 'ready_ms', digits(now + delay)
  end
  redis.call(unpack(hset))
  if delay > 0 then
    delay_job(p, id, now + delay)
    return {'created', 'delayed'}
  end
  return {'created', 'waiting'}
end

-- crew_submit(prefix; id, producer, task, args, priority, delay_ms, attempts, backoff,
-- backoff_ms, jitter, timeout_ms, retain_ms) -> {'created'|'exists', state}
-- A job id that exists already attaches to that job: it never runs twice.
local function submit(keys, argv)
  local fn = 'crew_submit'
  local p = prefix_of(fn, keys)
  if #argv ~= 12 then reject(fn, 'expects 12 arguments, got ' .. #argv) end
  local priority, delay = submission(fn, argv, 1)
  local tally = new_tally()
  local reply = create(p, tally, now_ms(), argv, 1, priority, delay)
  flush(p, tally)
  return reply
end

local function promote_due(p, limit, now)
  local ids = redis.call('ZRANGEBYSCORE', p .. 'delayed', '-inf', now, 'LIMIT', 0, limit)
  local moved = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', p .. 'delayed', id)
    local job = load_job(p, id)
    if job and job.state == 'delayed' then
      enqueue(p, id, job.priority)
      moved = moved + 1
    end
  end
  return moved
end

-- crew_promote(prefix; limit) -> number of delayed jobs now due and back in their streams.
local function promote(keys, argv)
  local fn = 'crew_promote'
  local p = prefix_of(fn, keys)
  return promote_due(p, int(fn, 'limit', argv[1], 1), now_ms())
end

local function due_in(p, now)
  local first = redis.call('ZRANGE', p .. 'delayed', 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return math.max(tonumber(first[2]) - now, 0)
end

-- Promotes due delayed jobs (at most `limit`); -> due_in after. One look when none is due, the
-- common case, where promoting first and asking after took two.
local function promote_then_due(p, limit, now)
  local due = due_in(p, now)
  if due ~= 0 then return due end
  promote_due(p, limit, now)
  return due_in(p, now)
end

-- crew_next_due(prefix) -> milliseconds until the earliest delayed job is due (0: due now), or
-- -1 when none waits. A worker blocks no longer than this, so delayed jobs start on time.
local function next_due(keys)
  return due_in(prefix_of('crew_next_due', keys), now_ms())
end

-- crew_init(prefix) -> 'ok': the consumer group on every priority stream and on `wake`. From
-- id 0, so jobs submitted before any worker existed are delivered too.
local function create_groups(p)
  for _, stream in ipairs({'p0', 'p1', 'p2', 'p3', 'wake'}) do
    local ok = redis.pcall('XGROUP', 'CREATE', p .. stream, GROUP, '0', 'MKSTREAM')
    if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP', 1, true) then
      error(ok)
    end
  end
end

local function init(keys)
  create_groups(prefix_of('crew_init', keys))
  return 'ok'
end

local function stream_of(fn, p, value)
  for priority = 0, 3 do
    if value == p .. 'p' .. priority then return value end
  end
  reject(fn, "stream must be one of the queue's streams " .. p .. "p0..p3, got '"
    .. tostring(value) .. "'")
end

-- Why `entry` of `stream` is not the job's current delivery, or nil when it is. A stray entry is
-- acknowledged and deleted; one naming no job is dead-lettered too.
local function stray(p, stream, entry, id, job)
  if not job then
    local reason = id == '' and 'malformed entry ' .. entry .. ': no job id'
      or 'entry ' .. entry .. ' names no job'
    drop_entry(stream, entry)
    dead_letter(p, id, '', 'Malformed', reason, 0)
    return reason
  end
  if job.stream ~= stream or job.entry ~= entry then
    drop_entry(stream, entry)
    return 'stale entry ' .. entry .. ' (job ' .. job.state .. ')'
  end
  return nil
end

-- Starts the job named by `entry` of `stream` (priority `priority`, as text) for `worker`:
--   {'run', lease, task, args, timeout_ms, attempt} | {'skip', reason}
-- The caller removes the entry from its stream, acknowledged (crew_start) or never pending
-- (crew_take reads with NOACK): from now on the lease, not the stream, tracks the job. The streams
-- then hold exactly the jobs waiting (crew_stats), and the pending list only deliveries that never
-- started (see crew_reclaim).
-- The lease token is the entry's id after its priority: an entry starts a job at most once (a
-- started job's hash no longer names it), so no token repeats, and none costs a counter.
-- `starts` (new_starts) carries the call's time and lease deadline, read and formatted once, and
-- collects the jobs started, which apply_starts adds to the worker's held set with one SADD.
local function start_entry(p, stream, priority, entry, id, worker, starts)
  local key = job_key(p, id)
  local v = id ~= '' and redis.call('HMGET', key, 'state', 'entry', 'priority', 'attempt', 'task',
    'args', 'timeout_ms') or {}
  local job = v[1] and {state = v[1], entry = v[2],
    stream = (v[3] or '0') == priority and stream or p .. 'p' .. v[3]} or nil
  local reason = stray(p, stream, entry, id, job)
  if reason then return {'skip', reason} end
  if job.state ~= 'waiting' then return {'skip', 'job is ' .. job.state} end
  local lease = priority .. ':' .. entry
  local attempt = v[4] and tonumber(v[4]) + 1 or 1
  redis.call('HSET', key, 'state', 'active', 'entry', '', 'owner', worker, 'lease', lease,
    'attempt', digits(attempt), 'started_ms', starts.now_text)
  local held = starts.held
  held[#held + 1] = id
  return {'run', lease, v[5], v[6], v[7] and tonumber(v[7]) or 0, attempt}
end

local function new_starts(now, lease_ms)
  return {now_text = digits(now), deadline = string.format('%d', now + lease_ms), held = {}}
end

-- The jobs a call started join their worker's held set, and the worker's lease is renewed.
local function apply_starts(p, worker, starts)
  if #starts.held == 0 then return end
  call_with({'SADD', held_key(p, worker)}, starts.held)
  lease_worker(p, worker, starts.deadline)
end

-- Removes the entries of `stream` the group is done with: all it delivered (up to its
-- last-delivered id), except the first one still pending (a blocking XREADGROUP's, not started
-- yet) and those after it. One XTRIM frees whole listpack nodes, where an XDEL per entry looks
-- each one up. Called where entries are taken (crew_take) and where a pending one is resolved
-- (started, redelivered): the entries a pending one held back go with it.
local function trim_done(stream)
  local last
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields.name == GROUP then last = fields['last-delivered-id'] end
  end
  if not last then return end
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq) + 1
  local pending = redis.call('XPENDING', stream, GROUP)
  if pending[1] > 0 then
    local pms, pseq = string.match(pending[2], '^(%d+)-(%d+)$')
    pms, pseq = tonumber(pms), tonumber(pseq)
    if pms < ms or (pms == ms and pseq < seq) then ms, seq = pms, pseq end
  end
  redis.call('XTRIM', stream, 'MINID', string.format('%d-%d', ms, seq))
end

-- Removes `stream`'s entries the group is done with (trim_done) after a pending one was resolved;
-- an empty stream (the common case: the entry was the only one) needs no look. -> whether
-- entries are left.
local function trim_resolved(stream)
  if redis.call('XLEN', stream) == 0 then return false end
  trim_done(stream)
  return true
end

-- crew_start(prefix; id, stream, entry, worker, lease_ms)
--   -> {'run', lease, task, args, timeout_ms, attempt} | {'skip', reason}
-- Called with what a blocking XREADGROUP delivered (see start_entry).
local function start(keys, argv)
  local fn = 'crew_start'
  local p = prefix_of(fn, keys)
  local id = argv[1] or ''
  local stream = stream_of(fn, p, argv[2])
  local entry = text(fn, 'entry', argv[3], 64)
  local worker = text(fn, 'worker', argv[4], 256)
  local lease_ms = int(fn, 'lease_ms', argv[5], 1)
  local starts = new_starts(now_ms(), lease_ms)
  local started = start_entry(p, stream, string.sub(stream, -1), entry, id, worker, starts)
  if started[1] == 'run' then
    drop_entry(stream, entry)
    trim_resolved(stream)
  end
  apply_starts(p, worker, starts)
  return started
end

-- crew_renew(prefix; id, lease, lease_ms) -> 'ok' (its worker's lease renewed) | 'lost' (the
-- worker must stop the task).
local function renew(keys, argv)
  local fn = 'crew_renew'
  local p = prefix_of(fn, keys)
  local id = text(fn, 'id', argv[1], 256)
  local lease = text(fn, 'lease', argv[2], 64)
  local lease_ms = int(fn, 'lease_ms', argv[3], 1)
  local job = load_job(p, id)
  if not owned(job, lease) then return 'lost' end
  lease_worker(p, job.owner, now_ms() + lease_ms)
  return 'ok'
end

-- A job kept for 0 ms is deleted at once: its result travels in the notification only, so the
-- hash is not written first. Its stream entry left when it started (start_entry).
local function complete_one(p, tally, now, id, lease, result)
  if tally.done[id] then return 'refused' end
  local key = job_key(p, id)
  local v = redis.call('HMGET', key, 'state', 'lease', 'producer', 'created_ms', 'ready_ms',
    'retain_ms', 'owner')
  if v[1] ~= 'active' or v[2] ~= lease then return 'refused' end
  tally.done[id] = true
  local owner = v[7] or ''
  local unlease = tally.unlease[owner]
  if not unlease then
    unlease = {}
    tally.unlease[owner] = unlease
  end
  unlease[#unlease + 1] = id
  local results = p .. 'results:' .. v[3]
  local fields = tally.results[results]
  if not fields then
    fields = {}
    tally.results[results] = fields
  end
  local n = #fields
  fields[n + 1], fields[n + 2], fields[n + 3] = 'id', id, 'state'
  fields[n + 4], fields[n + 5], fields[n + 6] = 'completed', 'result', result
  add(tally, 'stats', 'completed', 1)
  observe_latency(tally, v[5] or v[4], now)
  local retain = v[6]
  if not retain or retain == '0' then
    local del = tally.del
    del[#del + 1] = key
  else
    redis.call('HSET', key, 'state', 'completed', 'result', result, 'finished_ms', digits(now))
    redis.call('PEXPIRE', key, retain)
  end
  return 'ok'
end

-- crew_complete(prefix; id, lease, result) -> 'ok' | 'refused' (the lease is no longer this
-- caller's: the job was reclaimed, or settled already).
local function complete(keys, argv)
  local fn = 'crew_complete'
  local p = prefix_of(fn, keys)
  local id = text(fn, 'id', argv[1], 256)
  local lease = text(fn, 'lease', argv[2], 64)
  local result = argv[3]
  if type(result) ~= 'string' then reject(fn, 'expects a result') end
  local tally = new_tally()
  local reply = complete_one(p, tally, now_ms(), id, lease, result)
  flush(p, tally)
  return reply
end

local function backoff_delay(job)
  local delay = tonumber(job.backoff_ms)
  if job.backoff == 'exponential' then
    delay = delay * 2 ^ math.min(tonumber(job.attempt) - 1, 40)
  end
  local jitter = tonumber(job.jitter)
  if jitter > 0 then
    local t = redis.call('TIME')
    math.randomseed(tonumber(t[1]) * 1000000 + tonumber(t[2]))
    delay = delay * (1 + jitter * (2 * math.random() - 1))
  end
  return math.floor(math.min(delay, MAX_BACKOFF_MS))
end

-- -> {'retry', delay_ms} | {'dead'} | 'refused' (see crew_fail)
local function fail_one(p, tally, id, lease, error_type, message)
  if tally.done[id] then return 'refused' end
  local job = load_job(p, id)
  if not owned(job, lease) then return 'refused' end
  tally.done[id] = true
  add(tally, 'stats', 'failed', 1)
  -- BadArguments (an unknown task, arguments or a result that do not fit) would fail the same
  -- way again: no attempt is spent on it, as in a local ProcessPool.
  if error_type == 'BadArguments' or tonumber(job.attempt) >= tonumber(job.attempts) then
    settle_dead(p, id, job, error_type, message)
    return {'dead'}
  end
  delete_entry(job.stream, job.entry)
  unhold(p, id, job)
  redis.call('HSET', job_key(p, id), 'error_type', error_type, 'error', message, 'entry', '')
  add(tally, 'stats', 'retried', 1)
  local delay = backoff_delay(job)
  if delay > 0 then
    redis.call('HSET', job_key(p, id), 'state', 'delayed')
    delay_job(p, id, now_ms() + delay)
  else
    enqueue(p, id, job.priority)
  end
  return {'retry', delay}
end

-- crew_fail(prefix; id, lease, error_type, error) -> {'retry', delay_ms} | {'dead'} | 'refused'
-- With attempts left the job waits out its backoff in the delayed zset (or goes straight back to
-- its stream when the backoff is 0); after the last attempt, or for BadArguments, it is
-- dead-lettered.
local function fail_job(keys, argv)
  local fn = 'crew_fail'
  local p = prefix_of(fn, keys)
  local id = text(fn, 'id', argv[1], 256)
  local lease = text(fn, 'lease', argv[2], 64)
  local error_type = text(fn, 'error_type', argv[3], 256)
  local message = argv[4]
  if type(message) ~= 'string' then reject(fn, 'expects an error message') end
  local tally = new_tally()
  local reply = fail_one(p, tally, id, lease, error_type, message)
  flush(p, tally)
  return reply
end

-- crew_release(prefix; id, lease) -> 'ok' | 'refused'
-- A stopping worker hands a job it started back at once (no waiting for its lease to expire).
-- The run it gave up does not count as an attempt.
local function release(keys, argv)
  local fn = 'crew_release'
  local p = prefix_of(fn, keys)
  local id = text(fn, 'id', argv[1], 256)
  local lease = text(fn, 'lease', argv[2], 64)
  local job = load_job(p, id)
  if not owned(job, lease) then return 'refused' end
  drop_entry(job.stream, job.entry)
  unhold(p, id, job)
  redis.call('HSET', job_key(p, id), 'attempt', math.max(tonumber(job.attempt) - 1, 0),
    'lease', next_token(p))
  enqueue(p, id, job.priority)
  return 'ok'
end

-- Entries delivered more than `idle_ms` ago and still pending never started (crew_start
-- acknowledges): their reader died between XREADGROUP and crew_start. A job's current delivery
-- goes back to its stream as a fresh entry; a stray one is settled as crew_start would.
local function redeliver_unstarted(p, limit, idle_ms)
  local count = 0
  for priority = 0, 3 do
    local stream = p .. 'p' .. priority
    local pending = redis.pcall('XPENDING', stream, GROUP, 'IDLE', idle_ms, '-', '+', limit)
    if type(pending) == 'table' and not pending.err and #pending > 0 then
      for _, row in ipairs(pending) do
        local entry = row[1]
        local found = redis.call('XRANGE', stream, entry, entry)[1]
        local id = found and found[2][1] == 'id' and found[2][2] or ''
        local job = id ~= '' and load_job(p, id) or nil
        if not stray(p, stream, entry, id, job) and job.state == 'waiting' then
          drop_entry(stream, entry)
          enqueue(p, id, job.priority)
          count = count + 1
        end
      end
      trim_done(stream)
    end
  end
  return count
end

-- Takes an active job from its presumed dead owner: its lease token changes (the old owner's
-- renew, complete and fail are refused from now on) and it runs again, or is dead-lettered as
-- WorkerCrashed once it has been reclaimed more than max_reclaims times. -> 'requeued' | 'dead'
local function reclaim_job(p, id, job, max_reclaims)
  local reclaims = tonumber(job.reclaims) + 1
  redis.call('HSET', job_key(p, id), 'lease', next_token(p), 'reclaims', reclaims)
  bump(p, 'reclaimed')
  if reclaims > max_reclaims then
    settle_dead(p, id, job, 'WorkerCrashed', 'worker ' .. tostring(job.owner)
      .. ' stopped renewing its lease (reclaims: ' .. reclaims .. ')')
    return 'dead'
  end
  drop_entry(job.stream, job.entry)
  enqueue(p, id, job.priority)
  return 'requeued'
end

-- crew_reclaim(prefix; limit, max_reclaims, unstarted_idle_ms) -> {requeued, dead, redelivered}
-- A worker whose lease deadline passed is presumed dead: every job it held is reclaimed
-- (reclaim_job), at most `limit` workers a call. Version 8 made leases per worker (one `leases`
-- member per worker, its jobs in `held:<worker>`); a member that names a job is version 7's lease
-- of that one job, reclaimed the same way.
local function reclaim(keys, argv)
  local fn = 'crew_reclaim'
  local p = prefix_of(fn, keys)
  local limit = int(fn, 'limit', argv[1], 1)
  local max_reclaims = int(fn, 'max_reclaims', argv[2], 0)
  local idle_ms = int(fn, 'unstarted_idle_ms', argv[3], 0)
  local expired = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now_ms(), 'LIMIT', 0, limit)
  local count = {requeued = 0, dead = 0}
  for _, member in ipairs(expired) do
    redis.call('ZREM', p .. 'leases', member)
    local held = held_key(p, member)
    local ids = redis.call('SMEMBERS', held)
    redis.call('DEL', held)
    for _, id in ipairs(ids) do
      local job = load_job(p, id)
      if job and job.state == 'active' and job.owner == member then
        local outcome = reclaim_job(p, id, job, max_reclaims)
        count[outcome] = count[outcome] + 1
      end
    end
    if #ids == 0 then
      local job = load_job(p, member)
      if job and job.state == 'active' then
        local outcome = reclaim_job(p, member, job, max_reclaims)
        count[outcome] = count[outcome] + 1
      end
    end
  end
  local redelivered = idle_ms > 0 and redeliver_unstarted(p, limit, idle_ms) or 0
  return {count.requeued, count.dead, redelivered}
end

-- crew_stats(prefix) -> {name, value, ...}: jobs by state, the counters, then the latency
-- histogram's fields prefixed `latency:` (`latency:le:<ms>`, `latency:count`, `latency:sum_ms`).
local function stats(keys)
  local p = prefix_of('crew_stats', keys)
  local active = 0
  for _, worker in ipairs(redis.call('ZRANGE', p .. 'leases', 0, -1)) do
    active = active + redis.call('SCARD', held_key(p, worker))
  end
  local waiting = 0  -- a job leaves its stream when it starts
  for priority = 0, 3 do waiting = waiting + redis.call('XLEN', p .. 'p' .. priority) end
  local out = {'waiting', waiting, 'delayed', redis.call('ZCARD', p .. 'delayed'),
    'active', active, 'dead_letters', redis.call('XLEN', p .. 'dead')}
  local completed = 0
  local counters = redis.call('HGETALL', p .. 'stats')
  for i = 1, #counters, 2 do
    out[#out + 1] = counters[i]
    out[#out + 1] = tonumber(counters[i + 1])
    if counters[i] == 'completed' then completed = out[#out] end
  end
  -- Every completed job is observed once (a `count` field versions before 10 kept is ignored).
  if completed > 0 then out[#out + 1], out[#out + 2] = 'latency:count', completed end
  local latency = redis.call('HGETALL', p .. 'latency')
  for i = 1, #latency, 2 do
    if latency[i] ~= 'count' then
      out[#out + 1] = 'latency:' .. latency[i]
      out[#out + 1] = tonumber(latency[i + 1])
    end
  end
  return out
end

-- crew_job(prefix; id) -> {name, value, ...} | nil (no such job): a job's record as its status
-- shows it (without the arguments, which may be large), and when a delayed job is due, read in one
-- step. Absent fields are left out.
local JOB_FIELDS = {'state', 'task', 'priority', 'attempt', 'attempts', 'created_ms', 'started_ms',
  'finished_ms', 'result', 'error_type', 'error'}
local function job(keys, argv)
  local fn = 'crew_job'
  local p = prefix_of(fn, keys)
  local id = text(fn, 'id', argv[1], 256)
  local values = redis.call('HMGET', job_key(p, id), unpack(JOB_FIELDS))
  if not values[1] then return false end
  local out = {}
  for i, name in ipairs(JOB_FIELDS) do
    local value = values[i] or DEFAULTS[name]
    if value then
      out[#out + 1] = name
      out[#out + 1] = value
    end
  end
  if values[1] == 'delayed' then
    local due = redis.call('ZSCORE', p .. 'delayed', id)
    if due then
      out[#out + 1] = 'due_ms'
      out[#out + 1] = due
    end
  end
  return out
end

-- New entries of one priority stream for `worker`, at most `count`. No BLOCK: a function must not
-- wait. NOACK: the call starts or settles every entry it reads, so none needs a pending-list
-- entry (a lookup to add and one to acknowledge). A group that is gone (the stream was deleted)
-- is created again, as crew_init would.
local function read_new(p, stream, worker, count)
  local args = {'XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', digits(count), 'NOACK', 'STREAMS',
    stream, '>'}
  local reply = redis.pcall(unpack(args))
  if type(reply) == 'table' and reply.err then
    if not string.find(reply.err, 'NOGROUP', 1, true) then error(reply) end
    create_groups(p)
    reply = redis.call(unpack(args))
  end
  if not reply then return {} end
  return reply[1][2]
end

-- Entries of `stream` delivered to `worker` and never acknowledged, at most 100 (none when the
-- group is gone). A deleted one comes without fields (false).
local function read_own(stream, worker)
  local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', 100, 'STREAMS', stream,
    '0')
  if type(reply) ~= 'table' or reply.err or not reply[1] then return {} end
  return reply[1][2]
end

-- The entries delivered to `worker` and never acknowledged, at most 100 a stream, of the priority
-- streams (highest first) and `wake`: {{stream, entries}...}. One read for the five: a call per
-- stream was most of a waited-for job's start. A group that is gone fails the read of all, so
-- then they are read one by one.
local function read_all_own(p, worker)
  local streams = {p .. 'p3', p .. 'p2', p .. 'p1', p .. 'p0', p .. 'wake'}
  local reply = redis.pcall('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', 100, 'STREAMS',
    streams[1], streams[2], streams[3], streams[4], streams[5], '0', '0', '0', '0', '0')
  if type(reply) == 'table' and not reply.err and #reply == 5 then return reply end
  local out = {}
  for i, stream in ipairs(streams) do out[i] = {stream, read_own(stream, worker)} end
  return out
end

-- Starts the entries delivered to `worker` and never started (a blocking XREADGROUP's), as
-- crew_start would, into `out`, and acknowledges its `wake` deliveries. -> whether a stream that
-- delivered one still holds entries: only then may more be waiting (the read delivers one of
-- each stream that has new entries).
local function start_own(p, worker, starts, out)
  local backlog = false
  local owns = read_all_own(p, worker)
  for i = 1, 4 do
    local stream, own = owns[i][1], owns[i][2]
    local priority = digits(4 - i)
    for _, e in ipairs(own) do
      local fields = e[2]
      if not fields then
        redis.call('XACK', stream, GROUP, e[1])
      else
        local id = fields[1] == 'id' and fields[2] or ''
        local started = start_entry(p, stream, priority, e[1], id, worker, starts)
        if started[1] == 'run' then
          drop_entry(stream, e[1])
          started[1] = id
          out[#out + 1] = started
        end
      end
    end
    if #own > 0 and trim_resolved(stream) then backlog = true end
  end
  for _, e in ipairs(owns[5][2]) do
    redis.call('XACK', p .. 'wake', GROUP, e[1])
  end
  return backlog
end

-- Promotes due delayed jobs, then starts up to `count` jobs for `worker`, highest priority first
-- (COUNT applies per stream, so the streams are read one by one with what is still wanted).
-- A stale or malformed entry is settled as crew_start would and does not count.
--   -> {due_ms, {id, lease, task, args, timeout_ms, attempt}...}, due_ms as crew_next_due's
-- When nothing started the caller blocks next: old `wake` entries (a delayed job was submitted)
-- are skipped, since due_ms already accounts for every delayed job, and would only end its
-- block at once. With `own`, the entries delivered to `worker` and never started come first
-- (start_own), and new ones are taken only when there were any: own entries may take `count`
-- past its value.
local function take_jobs(p, worker, count, lease_ms, now, own)
  local out = {promote_then_due(p, 100, now)}
  local starts = new_starts(now, lease_ms)
  local more = true
  if own then
    -- Only a delivery says that more may follow, and only from a stream it left entries in. A
    -- read that delivered nothing (its block ended, or a stopping worker unblocked it) takes
    -- nothing new: a worker that stops starts nothing.
    local backlog = start_own(p, worker, starts, out)
    more = #out > 1 and backlog
  end
  for priority = 3, more and 0 or 4, -1 do
    local stream = p .. 'p' .. digits(priority)
    local last
    while #out - 1 < count do
      local wanted = count - (#out - 1)
      local entries = read_new(p, stream, worker, wanted)
      for _, e in ipairs(entries) do
        local fields = e[2]
        local id = type(fields) == 'table' and fields[1] == 'id' and fields[2] or ''
        local started = start_entry(p, stream, digits(priority), e[1], id, worker, starts)
        if started[1] == 'run' then
          started[1] = id
          out[#out + 1] = started
        end
        last = e[1]
      end
      if #entries < wanted then break end
    end
    if last then trim_done(stream) end
  end
  apply_starts(p, worker, starts)
  if #out == 1 then redis.pcall('XGROUP', 'SETID', p .. 'wake', GROUP, '$') end
  return out
end

-- crew_take(prefix; worker, count, lease_ms[, 'own']) -> {due_ms, {id, lease, task, args,
-- timeout_ms, attempt}...}: a worker's one call per turn for work (see take_jobs). A repeated
-- call (its reply was lost) starts other jobs; crew_recover hands over the ones the first call
-- started. 'own' first starts what a blocking XREADGROUP delivered to `worker`: a worker sends
-- this call pipelined behind its blocking read, so Redis starts a job as it delivers it, with no
-- round trip between.
local function take(keys, argv)
  local fn = 'crew_take'
  local p = prefix_of(fn, keys)
  local worker = text(fn, 'worker', argv[1], 256)
  local count = int(fn, 'count', argv[2], 1, 10000)
  local lease_ms = int(fn, 'lease_ms', argv[3], 1)
  if argv[4] ~= nil and argv[4] ~= 'own' then
    reject(fn, "the 4th argument, if any, must be 'own', got '" .. argv[4] .. "'")
  end
  return take_jobs(p, worker, count, lease_ms, now_ms(), argv[4] == 'own')
end

-- crew_recover(prefix; worker, lease_ms, lease...) -> {{id, lease, task, args, timeout_ms,
-- attempt}...}: what calls whose reply `worker` never got (Redis killed or stalled, the connection
-- dropped) left in its name, each of which would otherwise wait a whole lease for crew_reclaim.
-- Jobs active in its name whose lease is not among the given ones (the jobs it runs) are handed
-- over, its lease renewed: a crew_take, crew_report or crew_start started them. Entries
-- delivered to it and never started (a blocking XREADGROUP's) are started as crew_start would;
-- its `wake` deliveries are acknowledged. It reads every job the worker holds, so a worker calls
-- it only after a failed call, and with no call that starts jobs in flight.
local function recover(keys, argv)
  local fn = 'crew_recover'
  local p = prefix_of(fn, keys)
  local worker = text(fn, 'worker', argv[1], 256)
  local lease_ms = int(fn, 'lease_ms', argv[2], 1)
  local runs = {}
  for i = 3, #argv do runs[text(fn, 'lease', argv[i], 64)] = true end
  local now = now_ms()
  local out = {}
  local starts = new_starts(now, lease_ms)
  for _, id in ipairs(redis.call('SMEMBERS', held_key(p, worker))) do
    local key = job_key(p, id)
    local held = redis.call('HMGET', key, 'state', 'owner', 'lease')
    if held[1] == 'active' and held[2] == worker and not runs[held[3]] then
      local job = redis.call('HMGET', key, 'task', 'args', 'timeout_ms', 'attempt')
      out[#out + 1] = {id, held[3], job[1], job[2], tonumber(job[3] or '0'),
        tonumber(job[4] or '1')}
    end
  end
  if #out > 0 then lease_worker(p, worker, now + lease_ms) end
  start_own(p, worker, starts, out)
  apply_starts(p, worker, starts)
  return out
end

-- crew_report(prefix; worker, take, lease_ms, n, {kind, id, lease, a, b} x n)
--   -> {{status x n}} when take is 0, else {{status x n}, crew_take's reply}
-- A worker's outcomes in one call: kind 'complete' (a: the result, b unused) answers 'ok' or
-- 'refused' as crew_complete; kind 'fail' (a: error_type, b: the error) answers 'retry', 'dead'
-- or 'refused' as crew_fail. Then, with take > 0, it starts up to `take` jobs as crew_take, so
-- that finishing a job hands back the next. Each outcome is checked by its lease, so a repeated
-- call (its reply was lost) is refused for every outcome and settles nothing twice.
local function report(keys, argv)
  local fn = 'crew_report'
  local p = prefix_of(fn, keys)
  local worker = text(fn, 'worker', argv[1], 256)
  local count = int(fn, 'take', argv[2], 0, 10000)
  local lease_ms = int(fn, 'lease_ms', argv[3], 1)
  local n = int(fn, 'n', argv[4], 0, 10000)
  if #argv ~= 4 + 5 * n then
    reject(fn, 'expects 4 + 5 x ' .. n .. ' arguments, got ' .. #argv)
  end
  for i = 0, n - 1 do
    local at = 5 + 5 * i
    local kind = argv[at]
    if kind ~= 'complete' and kind ~= 'fail' then
      reject(fn, "kind must be 'complete' or 'fail', got '" .. tostring(kind) .. "'")
    end
    text(fn, 'id', argv[at + 1], 256)
    text(fn, 'lease', argv[at + 2], 64)
    if kind == 'fail' then text(fn, 'error_type', argv[at + 3], 256) end
  end
  local tally = new_tally()
  local now = now_ms()
  local statuses = {}
  for i = 0, n - 1 do
    local at = 5 + 5 * i
    local id, lease = argv[at + 1], argv[at + 2]
    if argv[at] == 'complete' then
      statuses[#statuses + 1] = complete_one(p, tally, now, id, lease, argv[at + 3])
    else
      local r = fail_one(p, tally, id, lease, argv[at + 3], argv[at + 4])
      statuses[#statuses + 1] = type(r) == 'table' and r[1] or r
    end
  end
  flush(p, tally)
  if count == 0 then return {statuses} end
  return {statuses, take_jobs(p, worker, count, lease_ms, now)}
end

-- crew_renew_many(prefix; lease_ms, {id, lease} x n) -> the leases of the jobs no longer this
-- caller's (the worker must stop them); the lease of the worker holding the others moves to
-- now + lease_ms.
local function renew_many(keys, argv)
  local fn = 'crew_renew_many'
  local p = prefix_of(fn, keys)
  local lease_ms = int(fn, 'lease_ms', argv[1], 1)
  if #argv % 2 ~= 1 then reject(fn, 'expects lease_ms and {id, lease} pairs') end
  for i = 2, #argv, 2 do
    text(fn, 'id', argv[i], 256)
    text(fn, 'lease', argv[i + 1], 64)
  end
  local deadline = now_ms() + lease_ms
  local lost, owners = {}, {}
  for i = 2, #argv, 2 do
    local id, lease = argv[i], argv[i + 1]
    local job = redis.call('HMGET', job_key(p, id), 'state', 'lease', 'owner')
    if job[1] == 'active' and job[2] == lease then
      owners[job[3]] = true
    else
      lost[#lost + 1] = lease
    end
  end
  for owner in pairs(owners) do lease_worker(p, owner, deadline) end
  return lost
end

-- crew_submit_many(prefix; n, {the 12 arguments of crew_submit} x n) -> one reply per
-- submission: crew_submit's, or an error reply naming the bad field (that submission alone is
-- left out). Several producers' threads' submissions in one call; each is idempotent by its id,
-- so a repeated call (its reply was lost) attaches instead of submitting twice.
local function submit_many(keys, argv)
  local fn = 'crew_submit_many'
  local p = prefix_of(fn, keys)
  local n = int(fn, 'n', argv[1], 1, 10000)
  if #argv ~= 1 + 12 * n then
    reject(fn, 'expects 1 + 12 x ' .. n .. ' arguments, got ' .. #argv)
  end
  local tally = new_tally()
  local now = now_ms()
  local out = {}
  for i = 0, n - 1 do
    local at = 2 + 12 * i
    local ok, priority, delay = pcall(submission, fn, argv, at)
    if ok then
      out[#out + 1] = create(p, tally, now, argv, at, priority, delay)
    elseif type(priority) == 'table' and priority.crew_error then
      out[#out + 1] = redis.error_reply(priority.crew_error)
    else
      error(priority)
    end
  end
  flush(p, tally)
  return out
end

redis.register_function{function_name = 'crew_version', callback = function() return VERSION end,
  flags = {'no-writes'}}
redis.register_function('crew_init', checked(init))
redis.register_function('crew_submit', checked(submit))
redis.register_function('crew_promote', checked(promote))
redis.register_function{function_name = 'crew_next_due', callback = checked(next_due),
  flags = {'no-writes'}}
redis.register_function('crew_start', checked(start))
redis.register_function('crew_renew', checked(renew))
redis.register_function('crew_complete', checked(complete))
redis.register_function('crew_fail', checked(fail_job))
redis.register_function('crew_reclaim', checked(reclaim))
redis.register_function('crew_release', checked(release))
redis.register_function{function_name = 'crew_stats', callback = checked(stats), flags = {'no-writes'}}
redis.register_function{function_name = 'crew_job', callback = checked(job), flags = {'no-writes'}}
redis.register_function('crew_take', checked(take))
redis.register_function('crew_report', checked(report))
redis.register_function('crew_renew_many', checked(renew_many))
redis.register_function('crew_recover', checked(recover))
redis.register_function('crew_submit_many', checked(submit_many))
