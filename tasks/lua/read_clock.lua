-- The queue's clock for one line, for estimates of when its waiting jobs start (tasks/eta.py). ARGV: cfg, line.
-- Returns {now ms, slots of the backends up that serve the line, {start time of each of their calls in flight},
-- {recent service times}, {starts in the last minute (the global rate window)}}.
local now = now_ms()
local cap, running = 0, {}
for _, b in ipairs(CFG.backends) do
  local view = backend_view(b, now)
  if view.up and (ARGV[2] == '' or model_for(view, ARGV[2])) then
    cap = cap + view.cap
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'slots:' .. b.name)) do
      running[#running + 1] = redis.call('HGET', job_key(id), 'attempt_started_at') or now
    end
  end
end
return {now, cap, running, redis.call('LRANGE', P .. 'service_ms', 0, -1),
        redis.call('ZRANGEBYSCORE', P .. 'starts', now - 60000, '+inf', 'WITHSCORES')}
