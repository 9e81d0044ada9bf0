-- Admit the best job that some backend can start now. ARGV: cfg, worker id.
-- Returns {'ok', id, epoch, backend, model, field, value, ...} (the job's record) | {'empty'} | {'busy'} |
-- {'wait', ms}: nothing may start for that long (a rate window is full, or the jobs that could start are all
-- backing off before a retry, or their backends are cooling down).
--
-- Work-conserving: every backend with a free slot takes part, and the job admitted is the best (lowest score:
-- priority, fair share, order) among the heads of the lines of the backends that have a free slot. For that
-- job a backend in good health is preferred to one just out of its cool-down (half-open: the job is its probe),
-- then the one that has its model loaded, then the one with the most free slots. A job backing off keeps its
-- place in its line but is passed over until its retry time.
local waiting = P .. 'waiting'
local now = now_ms()
-- Jobs that backed off handing their slot over (back_off.lua) rejoin their lines in this step, the one that gives
-- the slot to another job: the jobs behind them see that one leave as they come back.
for _, id in ipairs(redis.call('SMEMBERS', P .. 'handover')) do
  local f = redis.call('HMGET', job_key(id), 'status', 'score', 'line', 'user')
  if f[1] == 'retrying' then join_line(id, tonumber(f[2]), f[3], f[4], now) end
end
redis.call('DEL', P .. 'handover')
if redis.call('ZCARD', waiting) == 0 then return {'empty'} end
if redis.call('EXISTS', P .. 'paused') == 1 then return {'busy'} end  -- an admin paused admission
local soonest = nil
local function later(ms) if not soonest or ms < soonest then soonest = ms end end

local function window_full(key, rate)
  if rate <= 0 then return false end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - 60000)
  if redis.call('ZCARD', key) < rate then return false end
  later(tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + 60000)
  return true
end
if window_full(P .. 'starts', CFG.rate) then return {'wait', soonest - now} end

local lines = redis.call('SMEMBERS', P .. 'lines')
local parked = redis.call('ZCARD', P .. 'backoff')
local heads = {}
local function head(line)  -- the first job of a line that may start now (false: none)
  if heads[line] == nil then
    heads[line] = false
    local items = redis.call('ZRANGE', line_key(line), 0, parked, 'WITHSCORES')
    for i = 1, #items, 2 do
      local ready = tonumber(redis.call('ZSCORE', P .. 'backoff', items[i]))
      if not ready or ready <= now then
        heads[line] = {id = items[i], score = tonumber(items[i + 1])}
        break
      end
      later(ready)
    end
  end
  return heads[line]
end

local best = nil
for _, b in ipairs(CFG.backends) do
  local view = backend_view(b, now)
  local free = view.cap - redis.call('SCARD', P .. 'slots:' .. b.name)
  if not view.up and view.down_until then later(view.down_until) end
  if view.up and free > 0 and not window_full(P .. 'starts:' .. b.name, view.rate) then
    for _, line in ipairs(lines) do
      local model = model_for(view, line)
      local h = model and head(line)
      if h then
        local loaded, probe = contains(view.loaded, model), view.down_until ~= nil
        local better = not best or h.score < best.score
        if not better and h.score == best.score then  -- the same job: which server
          if probe ~= best.probe then better = best.probe
          elseif loaded ~= best.loaded then better = loaded
          else better = free > best.free end
        end
        if better then
          best = {id = h.id, score = h.score, line = line, backend = b.name, model = model, loaded = loaded,
                  free = free, probe = probe, cold = view.knows_loaded and not loaded}
        end
      end
    end
  end
end
if not best then
  if soonest then return {'wait', math.max(1, soonest - now)} end
  return {'busy'}
end

local id = best.id
local job = job_key(id)
local user = redis.call('HGET', job, 'user')
leave_line(id, best.line, user)
local level = level_of(best.score)
if tag_of(best.score) > (tonumber(redis.call('HGET', P .. 'vclock', level)) or 0) then
  redis.call('HSET', P .. 'vclock', level, tag_of(best.score))
end
local epoch = redis.call('HINCRBY', job, 'epoch', 1)
redis.call('HINCRBY', job, 'attempts', 1)
redis.call('ZADD', P .. 'leases', now + CFG.lease_ms, id)
redis.call('SADD', P .. 'slots:' .. best.backend, id)
if CFG.rate > 0 then redis.call('ZADD', P .. 'starts', now, id .. ':' .. epoch) end
for _, b in ipairs(CFG.backends) do
  if b.name == best.backend and (b.rate or 0) > 0 then
    redis.call('ZADD', P .. 'starts:' .. b.name, now, id .. ':' .. epoch)
  end
end
-- The phase is known here (the backend's loaded models, as last checked), so the worker goes straight to the LLM
-- call: no round trip of its own between this step and its request.
redis.call('HSET', job, 'status', 'running', 'phase', best.cold and 'loading' or 'prompt', 'progress', 8, 'cancel', 0,
           'worker', ARGV[2],
           'backend', best.backend, 'run_model', best.model, 'attempt_started_at', now)
redis.call('HDEL', job, 'retry_at', 'first_token_at', 'written')
redis.call('HSETNX', job, 'started_at', now)
emit(id, 'reset', '', epoch)
emit(id, 'status', snapshot(job), epoch)
changed('*queue', 'u:' .. user)
local reply = {'ok', id, epoch, best.backend, best.model}
for _, v in ipairs(redis.call('HGETALL', job)) do reply[#reply + 1] = v end
return reply
