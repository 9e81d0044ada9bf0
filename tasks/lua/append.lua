-- Append streamed chunks of a running job. ARGV: cfg, id, epoch, progress, first, kind, text, kind, text, ...
-- (kind: token | think; first: the number of the first chunk within the attempt, from 0: see emit_chunks).
-- Fenced by the epoch: a worker that lost its lease writes nothing. Returns 1 or 0.
-- The first chunk moves the job to 'generating', and the progress is told (a status entry) every 5 points: the
-- worker needs no round trip of its own for either.
local id, job = ARGV[2], job_key(ARGV[2])
local f = redis.call('HMGET', job, 'epoch', 'status', 'phase', 'progress')
if f[1] ~= ARGV[3] or f[2] ~= 'running' then return 0 end
local progress = tonumber(ARGV[4])
if f[3] ~= 'generating' or progress >= (tonumber(f[4]) or 0) + 5 then
  redis.call('HSET', job, 'phase', 'generating', 'progress', progress)
  emit(id, 'status', snapshot(job), ARGV[3])
end
emit_chunks(id, job, ARGV[3], tonumber(ARGV[5]), 6, (#ARGV - 5) / 2)
return 1
