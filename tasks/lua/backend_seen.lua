-- What a health check learnt of a backend. ARGV: cfg, name, up (1 | 0), models (JSON | ''), loaded (JSON | ''),
-- slots it says it has ('' = it doesn't say).
-- A failed check opens the circuit breaker for a cool-down; a successful one after the cool-down closes it (a
-- job's own failure opens it again at once). A failed check while the backend runs calls of ours changes
-- nothing: a server that answers one request at a time queues the check behind them (llama-cpp-python's holds
-- even /v1/models until the answer ends), so it times out although the server is busy answering; the calls'
-- own timeouts and failures say whether it is down. Returns {state now, state before}.
local key = P .. 'backend:' .. ARGV[2]
local now = now_ms()
local was = redis.call('HGET', key, 'state') or 'unknown'
redis.call('HSET', key, 'checked_at', now)
if ARGV[3] ~= '1' then
  if redis.call('SCARD', P .. 'slots:' .. ARGV[2]) > 0 then
    return {was, was}
  end
  if was ~= 'down' then
    redis.call('HSET', key, 'state', 'down', 'down_until', now + CFG.breaker_cooldown_ms)
  end
  return {'down', was}
end
for i, field in ipairs({'models', 'loaded', 'slots'}) do
  if ARGV[3 + i] ~= '' then redis.call('HSET', key, field, ARGV[3 + i]) else redis.call('HDEL', key, field) end
end
if redis.call('HGET', key, 'state') ~= 'down' or now >= (tonumber(redis.call('HGET', key, 'down_until')) or 0) then
  redis.call('HSET', key, 'state', 'up', 'failures', 0)
  if was ~= 'up' then  -- jobs may wait for it (its first check, its return): a ticket admits one now
    redis.call('LPUSH', P .. 'wake', 'backend:' .. ARGV[2])
    redis.call('LTRIM', P .. 'wake', 0, 99)
    queue_changed()
  end
  return {'up', was}
end
return {'down', was}
