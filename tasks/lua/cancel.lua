-- Stop a job. ARGV: cfg, id, user ('' = whoever asks may).
-- Returns 'missing' (no such job, or not this user's) | 'final' (already ended) | 'cancelled' (it was waiting or
-- backing off: ended here, with what its stream held) | 'cancelling' (running: its worker stops it within a poll,
-- or the reaper ends it if that worker is gone).
local id = ARGV[2]
local job = job_key(id)
local status = redis.call('HGET', job, 'status')
if not status or (ARGV[3] ~= '' and redis.call('HGET', job, 'user') ~= ARGV[3]) then return 'missing' end
if status == 'completed' or status == 'failed' or status == 'cancelled' then return 'final' end
if not redis.call('ZSCORE', P .. 'leases', id) then
  local answer, thinking = fold(id)
  end_job(id, redis.call('HGET', job, 'epoch'), 'cancelled', 'cancelled', {'answer', answer, 'thinking', thinking})
  return 'cancelled'
end
if redis.call('HGET', job, 'cancel') ~= '1' then
  redis.call('HSET', job, 'cancel', 1)
  emit(id, 'status', snapshot(job), redis.call('HGET', job, 'epoch'))
  changed('u:' .. redis.call('HGET', job, 'user'))
end
return 'cancelling'
