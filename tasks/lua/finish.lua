-- End a running job from its worker.
-- ARGV: cfg, id, epoch, status, phase, first, n, kind, text (n pairs), field, value, ...
-- The n chunks (numbered from first) are the answer's last, not known to be written (append.lua): received with
-- its end, or while the previous write was under way, they go into the stream with the end, in one step. A
-- cancelled job keeps what its stream holds (what the user saw), whatever the worker managed to count.
-- Returns 1 when this call ended the job, 0 when it was not this worker's to end.
local id, epoch, status = ARGV[2], ARGV[3], ARGV[4]
local job = job_key(id)
if redis.call('HGET', job, 'epoch') ~= epoch or redis.call('HGET', job, 'status') ~= 'running' then return 0 end
local chunks = tonumber(ARGV[7])
emit_chunks(id, job, epoch, tonumber(ARGV[6]), 8, chunks)
local fields = {unpack(ARGV, 8 + 2 * chunks)}
if status == 'failed' then  -- a permanent failure (or our time limit): the server's figures show it
  local named = {}
  for i = 1, #fields, 2 do named[fields[i]] = fields[i + 1] end
  backend_error(redis.call('HGET', job, 'backend'), named.error_code or '', named.error or '', now_ms())
end
if status == 'cancelled' then
  local answer, thinking = fold(id)
  for _, v in ipairs({'answer', answer, 'thinking', thinking}) do table.insert(fields, v) end
end
return end_job(id, epoch, status, ARGV[5], fields) and 1 or 0
