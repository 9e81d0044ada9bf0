-- Record a phase change of a running job. ARGV: cfg, id, epoch, phase, progress. Returns 1, or 0 when stale.
local id, job = ARGV[2], job_key(ARGV[2])
if redis.call('HGET', job, 'epoch') ~= ARGV[3] or redis.call('HGET', job, 'status') ~= 'running' then return 0 end
redis.call('HSET', job, 'phase', ARGV[4], 'progress', ARGV[5])
emit(id, 'status', snapshot(job), ARGV[3])
changed(id)
return 1
