-- A failed attempt of a running job. ARGV: cfg, id, epoch, backoff ms, error, error code.
-- Every attempt counts (ADMIT counted it): after max_attempts the job fails with the last error. Otherwise it
-- backs off in its own place in the line (waiting, passed over by ADMIT until its retry time) and frees its
-- slot. A failure that is the server's counts against its circuit breaker, so that the retry goes to another
-- backend that serves the model when there is one.
--
-- Positions: the jobs behind it did not count it while it ran. When another job may start at once (the slot it
-- frees), it is handed over: it rejoins its line in the ADMIT step that takes that slot, so that the jobs behind
-- it see one job leave as it comes back and their positions never go up (the one next in line simply starts). When
-- nothing may start now (the rate window is full, its server's breaker opened, admission is paused), it rejoins at
-- once: it will start before them, and their positions say so.
-- Returns 1 (backing off), 2 (failed: no attempts left), -1 (a Stop was pending: ended as cancelled), 0 (stale).
local id, epoch, code = ARGV[2], ARGV[3], ARGV[6]
local job = job_key(id)
if redis.call('HGET', job, 'epoch') ~= epoch or redis.call('HGET', job, 'status') ~= 'running' then return 0 end
local now = now_ms()
local f = redis.call('HMGET', job, 'backend', 'attempts', 'cancel', 'score', 'line', 'user')
backend_failed(f[1], code, now)
backend_error(f[1], code, ARGV[5], now)
if f[3] == '1' then
  local answer, thinking = fold(id)
  end_job(id, epoch, 'cancelled', 'cancelled', {'answer', answer, 'thinking', thinking})
  return -1
end
local attempts = tonumber(f[2])
if attempts >= CFG.max_attempts then
  local answer, thinking = fold(id)
  end_job(id, epoch, 'failed', 'failed', {'error', ARGV[5] .. ' (gave up after ' .. attempts .. ' attempts)',
                                          'error_code', code, 'answer', answer, 'thinking', thinking})
  return 2
end
local ready = now + tonumber(ARGV[4])
free_slot(id, f[1])

-- Whether ADMIT may start another job now: something waits, admission is not paused, the rate window has room and
-- some server is up with a free slot. (If it guesses wrong, the next ADMIT puts the job back in line anyway.)
local function another_may_start()
  if redis.call('ZCARD', P .. 'waiting') == 0 or redis.call('EXISTS', P .. 'paused') == 1 then return false end
  if CFG.rate > 0 and redis.call('ZCOUNT', P .. 'starts', '(' .. (now - 60000), '+inf') >= CFG.rate then return false end
  for _, b in ipairs(CFG.backends) do
    local view = backend_view(b, now)
    if view.up and view.cap > redis.call('SCARD', P .. 'slots:' .. b.name) then return true end
  end
  return false
end
if another_may_start() then
  redis.call('SADD', P .. 'handover', id)
else
  join_line(id, tonumber(f[4]), f[5], f[6], now)
end
redis.call('ZADD', P .. 'backoff', ready, id)
redis.call('HSET', job, 'status', 'retrying', 'phase', 'retrying', 'error', ARGV[5], 'error_code', code,
           'retry_at', ready)
emit(id, 'status', snapshot(job), epoch)
changed('*queue', 'u:' .. f[6])
return 1
