-- Read one job. ARGV: cfg, id, user ('' = anyone). Returns false (no such job, or not this user's) or
-- {record as field, value, ..., position (-1: not waiting), stream entries of a job still live ({} once ended),
--  the time of the read (ms), why it can't start ('' | 'no_backend' | 'backend_down')}.
local id = ARGV[2]
local job = job_key(id)
local raw = redis.call('HGETALL', job)
if #raw == 0 or (ARGV[3] ~= '' and redis.call('HGET', job, 'user') ~= ARGV[3]) then return false end
local f = redis.call('HMGET', job, 'status', 'line', 'score')
local now = now_ms()
local entries, position, why = {}, -1, ''
if f[1] ~= 'completed' and f[1] ~= 'failed' and f[1] ~= 'cancelled' then
  entries = redis.call('XRANGE', stream_key(id), '-', '+')
end
if in_line(id) then
  position = position_of(id, f[2], tonumber(f[3]), now)
  why = blocked(f[2], now) or ''
end
return {raw, position, entries, now, why}
