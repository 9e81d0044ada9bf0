-- Shared by every step (queue.py puts it in front of each script). The key prefix, the Redis clock, the config
-- that the caller sends as ARGV[1], and the few operations more than one step needs. A step's own arguments
-- start at ARGV[2].
local P = '@PREFIX@'
local CFG = cjson.decode(ARGV[1])

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return P .. 'job:' .. id end
local function stream_key(id) return P .. 'stream:' .. id end

-- Scores: level * LEVEL_SPAN + tag * TAG_SPAN + (seq mod TAG_SPAN), exact in a double (< 2^53). `tag` is the
-- job's virtual start in its level (fair share: see submit.lua). Concatenating a large number loses digits in
-- Lua: num() writes it whole.
local LEVEL_SPAN, TAG_SPAN = 1e15, 1e4
local function num(x) return string.format('%.0f', x) end
local function level_of(score) return math.floor(score / LEVEL_SPAN) end
local function tag_of(score) return math.floor((score % LEVEL_SPAN) / TAG_SPAN) end
local function line_key(line) return P .. 'line:' .. line end

-- A waiting job is in `waiting` (every line together), in its line (`line:<model or alias>`), counted for its
-- user, and in `since` (when it entered its current level, for aging).
local function join_line(id, score, line, user, since)
  redis.call('ZADD', P .. 'waiting', score, id)
  redis.call('ZADD', line_key(line), score, id)
  redis.call('SADD', P .. 'lines', line)
  redis.call('ZADD', P .. 'since', since, id)
  redis.call('HINCRBY', P .. 'user_waiting', user, 1)
end

-- Out of the line (admitted, cancelled, ended, or being moved). Returns false when it was not waiting. When a
-- user has nothing waiting any more, their fair-share history is dropped: their next job starts from the clock.
local function leave_line(id, line, user)
  if redis.call('ZREM', P .. 'waiting', id) == 0 then return false end
  redis.call('ZREM', line_key(line), id)
  redis.call('ZREM', P .. 'backoff', id)
  redis.call('ZREM', P .. 'since', id)
  if redis.call('ZCARD', line_key(line)) == 0 then redis.call('SREM', P .. 'lines', line) end
  if redis.call('HINCRBY', P .. 'user_waiting', user, -1) <= 0 then
    redis.call('HDEL', P .. 'user_waiting', user)
    for level = 0, 2 do redis.call('HDEL', P .. 'last:' .. level, user) end
  end
  return true
end

-- A running job holds a lease (`leases`, scored by expiry) and a slot of its backend (`slots:<backend>`).
local function free_slot(id, backend)
  if redis.call('ZREM', P .. 'leases', id) == 0 then return false end
  if backend then redis.call('SREM', P .. 'slots:' .. backend, id) end
  redis.call('LPUSH', P .. 'wake', id)
  redis.call('LTRIM', P .. 'wake', 0, 99)
  return true
end

-- The backends (CFG.backends: name, cap?, rate?, models?) as the queue sees them now: what `backend:<name>` says
-- of their health, discovered models and detected slots. models == nil: not known, so it may serve any line.
-- In a fleet, a backend whose models are not known (not configured, never listed by a successful check) takes no
-- job: a job sent there blind fails for good when the server lacks its model, while another server has it. Its
-- first successful check (tasks/backends.py, within a second or two of a start) tells; meanwhile `checking` is
-- true until a check fails. One backend alone is tried blind: there is nowhere else to go.
local function backend_view(b, now)
  local f = redis.call('HMGET', P .. 'backend:' .. b.name, 'state', 'down_until', 'models', 'loaded', 'slots')
  local models = b.models
  if not models and f[3] then models = cjson.decode(f[3]) end
  local view = {name = b.name, models = models, loaded = f[4] and cjson.decode(f[4]) or {}, knows_loaded = f[4] ~= false,
                cap = b.cap or tonumber(f[5]) or 1, rate = b.rate or 0, up = true}
  if f[1] == 'down' then
    view.up = now >= (tonumber(f[2]) or 0)
    view.cap = 1  -- half-open after the cool-down: one job tries it
    view.down_until = tonumber(f[2]) or 0
  end
  if not models and #CFG.backends > 1 then
    view.up, view.down_until = false, nil
    view.checking = f[1] ~= 'down'
  end
  return view
end

local function contains(list, item)
  for _, x in ipairs(list) do if x == item then return true end end
  return false
end

-- The model a backend would run for a line (a model, or an alias of several), preferring one it has loaded;
-- nil when it serves none of them.
local function model_for(view, line)
  local wanted = CFG.aliases[line] or {line}
  local found = nil
  for _, model in ipairs(wanted) do
    if not view.models or contains(view.models, model) then
      if contains(view.loaded, model) then return model end
      found = found or model
    end
  end
  return found
end

-- Position: the waiting jobs ahead of this one in the lines that compete for the backends that can run it.
-- With a backend that serves every line, that is simply its rank among all waiting jobs. (A job handed over by
-- BACK_OFF is out of the line until the next admission: it counts the jobs ahead of its place.)
local function position_of(id, line, score, now)
  local related, every = {}, false
  for _, b in ipairs(CFG.backends) do
    local view = backend_view(b, now)
    if model_for(view, line) then
      if not view.models then every = true break end
      for _, other in ipairs(redis.call('SMEMBERS', P .. 'lines')) do
        if model_for(view, other) then related[other] = true end
      end
    end
  end
  if every then
    return redis.call('ZRANK', P .. 'waiting', id) or redis.call('ZCOUNT', P .. 'waiting', '-inf', '(' .. num(score))
  end
  related[line] = true
  local ahead = 0
  for other in pairs(related) do ahead = ahead + redis.call('ZCOUNT', line_key(other), '-inf', '(' .. num(score)) end
  return ahead
end

-- Why a waiting job can't start at all: no backend serves its line, or every one that does is down — out of its
-- cool-down or not: one that a job may try (half-open) has not shown it is back. One not checked yet is not a
-- reason: it is about to be.
local function blocked(line, now)
  local served = false
  for _, b in ipairs(CFG.backends) do
    local view = backend_view(b, now)
    if model_for(view, line) then
      served = true
      if (view.up and not view.down_until) or view.checking then return false end
    end
  end
  return served and 'backend_down' or 'no_backend'
end

-- The circuit breaker: a call that failed because of the server opens it (at once when the server is
-- unreachable or silent, after CFG.breaker_failures refusals in a row); a completed call closes it. A bad line in
-- an answer or a cut stream says nothing about the next call, and does not count.
local SERVER_FAULTS = {llm_unreachable = true, llm_timeout = true, llm_refused = true, llm_busy = true}
local function backend_failed(backend, code, now)
  if not backend or not SERVER_FAULTS[code] then return end
  local key = P .. 'backend:' .. backend
  local failures = redis.call('HINCRBY', key, 'failures', 1)
  if code == 'llm_unreachable' or code == 'llm_timeout' or failures >= CFG.breaker_failures then
    redis.call('HSET', key, 'state', 'down', 'down_until', now + CFG.breaker_cooldown_ms)
    redis.call('HINCRBY', key, 'trips', 1)
  end
end
local function backend_ok(backend)
  if backend then redis.call('HSET', P .. 'backend:' .. backend, 'state', 'up', 'failures', 0) end
end

-- A failed call on a server, for its figures: counted, and the last few kept (when, code, what) for the metrics
-- drawer. Said to users already; here the server's operator sees which server fails, and how.
local function backend_error(backend, code, message, now)
  if not backend or backend == '' then return end
  redis.call('HINCRBY', P .. 'backend_stats:' .. backend, 'errors', 1)
  local recent = P .. 'backend_errors:' .. backend
  redis.call('LPUSH', recent, cjson.encode({at = now, code = code, error = string.sub(message or '', 1, 200)}))
  redis.call('LTRIM', recent, 0, 4)
end

-- Every change to a job is an entry of its stream: k = status | reset | token | think | done, d = text or a JSON
-- snapshot, a = the epoch that wrote it. Readers fold these entries into the job's state (tasks/fold.py).
local function emit(id, kind, data, epoch)
  return redis.call('XADD', stream_key(id), '*', 'k', kind, 'd', data, 'a', epoch)
end

-- Streamed chunks into the job's stream, one entry each: ``count`` (kind, text) pairs of ARGV from ``from`` on,
-- numbered from ``first`` within the attempt. ``written`` (the record) counts the attempt's chunks in the stream:
-- a chunk sent again is not written again — a write the worker gave up on may have arrived after all (a Stop
-- cut it off after it was sent; redis-py sent it again after a timeout), and its chunks come again with the next.
-- The first chunk written dates the answer's first token.
local function emit_chunks(id, job, epoch, first, from, count)
  local written = tonumber(redis.call('HGET', job, 'written')) or 0
  if first + count <= written then return end
  for k = math.max(0, written - first), count - 1 do emit(id, ARGV[from + 2 * k], ARGV[from + 2 * k + 1], epoch) end
  redis.call('HSET', job, 'written', first + count)
  redis.call('HSETNX', job, 'first_token_at', now_ms())
end

local SNAPSHOT_FIELDS = {'status', 'phase', 'progress', 'attempts', 'error', 'error_code', 'cancel', 'retry_at',
                         'done_reason', 'backend', 'priority'}
local function snapshot(job)
  local f = redis.call('HMGET', job, unpack(SNAPSHOT_FIELDS))
  return cjson.encode({status = f[1], phase = f[2], progress = tonumber(f[3]) or 0,
                       attempts = tonumber(f[4]) or 0, error = f[5] or cjson.null, error_code = f[6] or cjson.null,
                       cancel = f[7] == '1', retry_at = tonumber(f[8]) or cjson.null,
                       done_reason = f[9] or cjson.null, backend = f[10] or cjson.null, priority = f[11]})
end

-- qc:events carries '*queue' when positions may have moved, 'u:<user>' when a user's history or conversations
-- changed and 'c:<conversation>' when a conversation got a new job. Not a job's own changes: its stream tells
-- them to whoever follows it (every app process would otherwise wake for every job's every step).
-- Whether a job is in line: waiting, or handed over by BACK_OFF until the next admission.
local function in_line(id)
  return redis.call('ZSCORE', P .. 'waiting', id) or redis.call('SISMEMBER', P .. 'handover', id) == 1
end

-- One message per step, its topics one per line (an identity has no line break: HTTP headers can't carry one):
-- every app process reads every message, so a job's steps cost each app a message apiece, not one per topic.
local function changed(...) redis.call('PUBLISH', P .. 'events', table.concat({...}, '\n')) end
local function queue_changed() changed('*queue') end

-- The answer and thinking of the latest attempt, as a reader of the stream would fold them.
local function fold(id)
  local answer, thinking = {}, {}
  for _, entry in ipairs(redis.call('XRANGE', stream_key(id), '-', '+')) do
    local f = entry[2]
    local kind, data = f[2], f[4]
    if kind == 'reset' then answer, thinking = {}, {}
    elseif kind == 'token' then answer[#answer + 1] = data
    elseif kind == 'think' then thinking[#thinking + 1] = data end
  end
  return table.concat(answer), table.concat(thinking)
end

local function minute_key(now) return P .. 'm:' .. math.floor(now / 60000) end

-- The figures of a job that just ended, in the same step that ends it: minute buckets for the chart and the
-- percentiles, the service times the ETA is computed from, and the all-time totals.
local function record_end(job, status, now)
  local f = redis.call('HMGET', job, 'kind', 'created_at', 'started_at', 'attempt_started_at', 'first_token_at',
                       'user', 'completion_tokens', 'backend')
  local kind, created, started = f[1], tonumber(f[2]), tonumber(f[3])
  local attempt_started, first = tonumber(f[4]), tonumber(f[5])
  local bucket = minute_key(now)
  -- per identity and hour, for the admin board: jobs, tokens, and (capped) wait samples
  local usage = P .. 'usage:' .. math.floor(now / 3600000)
  redis.call('HINCRBY', usage, 'jobs:' .. f[6], 1)
  redis.call('HINCRBY', usage, 'tokens:' .. f[6], tonumber(f[7]) or 0)
  redis.call('EXPIRE', usage, CFG.bucket_ttl_s)
  if started then
    redis.call('RPUSH', usage .. ':waits', f[6] .. '|' .. (started - created))
    redis.call('LTRIM', usage .. ':waits', -500, -1)
    redis.call('EXPIRE', usage .. ':waits', CFG.bucket_ttl_s)
  end
  redis.call('HINCRBY', P .. 'totals', status, 1)
  redis.call('HINCRBY', bucket, status, 1)
  if status == 'completed' and kind == 'chat' then
    redis.call('HINCRBY', P .. 'totals', 'response_ms_sum', now - created)
    redis.call('HINCRBY', P .. 'totals', 'response_count', 1)
    redis.call('HINCRBY', bucket, 'response_ms_sum', now - created)
    redis.call('LPUSH', P .. 'service_ms', now - (attempt_started or started))
    redis.call('LTRIM', P .. 'service_ms', 0, 49)
  end
  if started then
    redis.call('RPUSH', bucket .. ':wait', started - created)
    redis.call('EXPIRE', bucket .. ':wait', CFG.bucket_ttl_s)
  end
  if first then
    redis.call('RPUSH', bucket .. ':ttft', first - created)
    redis.call('EXPIRE', bucket .. ':ttft', CFG.bucket_ttl_s)
  end
  redis.call('EXPIRE', bucket, CFG.bucket_ttl_s)
  -- per server (the one of the last attempt; a job that never ran has none): jobs ended, and for an answer its
  -- tokens and generation time (first token to end), all-time for Prometheus and decayed (the last ten or so
  -- answers weigh most) for the drawer's tokens/s
  local backend, tokens = f[8], tonumber(f[7]) or 0
  if backend and backend ~= '' and attempt_started then
    local stats = P .. 'backend_stats:' .. backend
    redis.call('HINCRBY', stats, status, 1)
    local since = first or attempt_started
    if status == 'completed' and tokens > 0 and now > since then
      redis.call('HINCRBY', stats, 'tokens', tokens)
      redis.call('HINCRBY', stats, 'generation_ms', now - since)
      local d = redis.call('HMGET', stats, 'recent_tokens', 'recent_ms')
      redis.call('HSET', stats, 'recent_tokens', string.format('%.3f', 0.9 * (tonumber(d[1]) or 0) + tokens),
                 'recent_ms', string.format('%.3f', 0.9 * (tonumber(d[2]) or 0) + now - since))
    end
  end
end

-- The one way a job ends, from any state: final status, out of every queue structure, figures counted, a 'done'
-- entry, the slot's wake-up, and expiries so that nothing of it stays beyond the retention. `fields` is a flat
-- list of extra field/value pairs (answer, error, ...). Returns false when the job had already ended.
local function end_job(id, epoch, status, phase, fields)
  local job = job_key(id)
  local current = redis.call('HGET', job, 'status')
  if not current or current == 'completed' or current == 'failed' or current == 'cancelled' then return false end
  local now = now_ms()
  local progress = redis.call('HGET', job, 'progress')
  if status == 'completed' then progress = 100 end
  redis.call('HSET', job, 'status', status, 'phase', phase, 'progress', progress, 'finished_at', now)
  if #fields > 0 then redis.call('HSET', job, unpack(fields)) end
  redis.call('HDEL', job, 'retry_at')
  local f = redis.call('HMGET', job, 'user', 'line', 'backend')
  local user = f[1]
  leave_line(id, f[2], user)
  redis.call('SREM', P .. 'handover', id)  -- backing off between its line and the next admission
  redis.call('ZREM', P .. 'backoff', id)
  free_slot(id, f[3])
  if status == 'completed' then backend_ok(f[3]) end
  record_end(job, status, now)
  emit(id, 'done', snapshot(job), epoch)
  redis.call('EXPIRE', stream_key(id), CFG.stream_ttl_s)
  redis.call('EXPIRE', job, CFG.retention_s)
  if user then changed('*queue', 'u:' .. user) else queue_changed() end
  return true
end

-- REAP: recover jobs whose worker stopped renewing its lease (killed, frozen, cut off from Redis).
-- A lease is reaped `reap_grace_ms` after it expired: by then a frozen worker on a host that main.py supervises
-- has been killed (its LLM connection closed with it), and a live worker that lost its link to Redis has
-- stopped its own call (it stops before its lease runs out). A pending Stop is honoured; a job that has used
-- its attempts fails; any other goes back to its own place in the line with a new epoch, so that the old
-- worker, should it wake, can write nothing. Also, with aging on, jobs that waited `aging_ms` in their level
-- move up one level (a new tag there, as if submitted at that level now); and jobs for a model no server offers
-- fail.
-- Returns the ids put back and the ids ended.
local function reap(now)
  local back, ended, moved = {}, {}, false
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now - CFG.reap_grace_ms)) do
    local job = job_key(id)
    local f = redis.call('HMGET', job, 'status', 'epoch', 'cancel', 'attempts', 'score', 'line', 'user', 'backend')
    if f[1] ~= 'running' then
      free_slot(id, f[8])
    elseif f[3] == '1' or tonumber(f[4]) >= CFG.max_attempts then
      local answer, thinking = fold(id)
      if f[3] == '1' then
        end_job(id, f[2], 'cancelled', 'cancelled', {'answer', answer, 'thinking', thinking})
      else
        end_job(id, f[2], 'failed', 'failed', {
          'error', 'The worker answering this stopped responding (gave up after ' .. f[4] .. ' attempts).',
          'error_code', 'worker_lost', 'answer', answer, 'thinking', thinking})
      end
      ended[#ended + 1] = id
    else
      free_slot(id, f[8])
      local epoch = redis.call('HINCRBY', job, 'epoch', 1)
      redis.call('HSET', job, 'status', 'queued', 'phase', 'recovering')
      join_line(id, tonumber(f[5]), f[6], f[7], now)
      emit(id, 'status', snapshot(job), epoch)
      changed('u:' .. f[7])
      back[#back + 1] = id
    end
  end

  -- A job for a model that no server offers (every server's models are known, and none lists it) would wait for
  -- ever: it fails, saying so. (A model whose servers are down waits; it says why.)
  for _, line in ipairs(redis.call('SMEMBERS', P .. 'lines')) do
    if blocked(line, now) == 'no_backend' then
      for _, id in ipairs(redis.call('ZRANGE', line_key(line), 0, 99)) do
        end_job(id, redis.call('HGET', job_key(id), 'epoch'), 'failed', 'failed', {
          'error', 'No LLM server offers the model ' .. line .. ': pick another model.',
          'error_code', 'unknown_model'})
        ended[#ended + 1] = id
      end
    end
  end

  if CFG.aging_ms > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'since', '-inf', now - CFG.aging_ms, 'LIMIT', 0, 100)) do
      local job = job_key(id)
      local f = redis.call('HMGET', job, 'score', 'line', 'user', 'priority')
      local level = level_of(tonumber(f[1]))
      if level == 0 then
        redis.call('ZADD', P .. 'since', now + 1e12, id)  -- the top level: nothing to age into
      else
        leave_line(id, f[2], f[3])
        level = level - 1
        local clock = tonumber(redis.call('HGET', P .. 'vclock', level)) or 0
        local score = level * LEVEL_SPAN + (clock + 1) * TAG_SPAN + tonumber(num(f[1])) % TAG_SPAN
        redis.call('HSET', job, 'score', num(score), 'priority', ({[0] = 'high', [1] = 'normal'})[level],
                   'aged_from', f[4])
        join_line(id, score, f[2], f[3], now)
        emit(id, 'status', snapshot(job), redis.call('HGET', job, 'epoch'))
        moved = true
      end
    end
  end
  if #back > 0 or moved then queue_changed() end
  return back, ended
end
