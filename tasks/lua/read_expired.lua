-- The running jobs whose lease has run out, each with the worker that holds it: main.py kills its own frozen
-- workers among them before the reap grace is over. ARGV: cfg. Returns {id, worker, id, worker, ...}.
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now_ms())) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', job_key(id), 'worker') or ''
end
return out
