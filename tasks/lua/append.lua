-- Append streamed chunks of a running job. ARGV: cfg, id, epoch, progress, kind, text, kind, text, ...
-- (kind: token | think). Fenced by the epoch: a worker that lost its lease writes nothing. Returns 1 or 0.
local id, job = ARGV[2], job_key(ARGV[2])
if redis.call('HGET', job, 'epoch') ~= ARGV[3] or redis.call('HGET', job, 'status') ~= 'running' then return 0 end
for i = 5, #ARGV, 2 do emit(id, ARGV[i], ARGV[i + 1], ARGV[3]) end
redis.call('HSET', job, 'progress', ARGV[4])
redis.call('HSETNX', job, 'first_token_at', now_ms())
return 1
