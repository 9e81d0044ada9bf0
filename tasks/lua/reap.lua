-- Recover jobs whose worker stopped renewing its lease (killed, frozen, cut off from Redis). ARGV: cfg.
-- A lease is reaped `reap_grace_ms` after it expired: by then a frozen worker on a host that main.py supervises
-- has been killed (its LLM connection closed with it), and a live worker that lost its link to Redis has
-- stopped its own call (it stops before its lease runs out). A pending Stop is honoured; a job that has used
-- its attempts fails; any other goes back to its own place in the line with a new epoch, so that the old
-- worker, should it wake, can write nothing. Also, with aging on, jobs that waited `aging_ms` in their level
-- move up one level (a new tag there, as if submitted at that level now); and jobs for a model no server offers
-- fail.
-- Returns {ids put back, ids ended}.
local now = now_ms()
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
    changed(id)
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
        'error', 'No LLM server offers the model ' .. line .. ': pick another model.', 'error_code', 'unknown_model'})
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
      changed(id)
      moved = true
    end
  end
end
if #back > 0 or moved then queue_changed() end
return {back, ended}
