-- Renew a running job's lease. ARGV: cfg, id, epoch. Returns {owned, cancel requested}.
local id, job = ARGV[2], job_key(ARGV[2])
if redis.call('HGET', job, 'epoch') ~= ARGV[3] or not redis.call('ZSCORE', P .. 'leases', id) then return {0, 0} end
redis.call('ZADD', P .. 'leases', now_ms() + CFG.lease_ms, id)
return {1, tonumber(redis.call('HGET', job, 'cancel')) or 0}
