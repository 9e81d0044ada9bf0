-- The admin board: every running job and the first `limit` waiting ones, without their text. ARGV: cfg, limit.
-- Returns {paused (0|1), {running: id, user, priority, model, status, created_at, started_at, attempts, backend,
-- worker, ...}, {waiting: id, user, priority, model, status, created_at, attempts, position, retry_at, ...},
-- total waiting}.
local now = now_ms()
local FIELDS = {'user', 'priority', 'model', 'status', 'created_at', 'started_at', 'attempts', 'backend', 'worker',
                'line', 'score', 'retry_at'}
local function row(id)
  local f = redis.call('HMGET', job_key(id), unpack(FIELDS))
  local out = {id}
  for i = 1, 9 do out[#out + 1] = f[i] or '' end
  return out, f
end
local running = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'leases', 0, -1)) do running[#running + 1] = row(id) end
local waiting = {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'waiting', 0, tonumber(ARGV[2]) - 1)) do
  local out, f = row(id)
  out[#out + 1] = position_of(id, f[10], tonumber(f[11]), now)
  out[#out + 1] = f[12] or ''
  waiting[#waiting + 1] = out
end
return {redis.call('EXISTS', P .. 'paused'), running, waiting, redis.call('ZCARD', P .. 'waiting')}
