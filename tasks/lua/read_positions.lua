-- Positions of several jobs, for the pages and SSE clients that follow them. ARGV: cfg, id, id, ...
-- Returns {position or -1, why ('' | 'no_backend' | 'backend_down'), ...} in the order asked.
local now = now_ms()
local out = {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', job_key(ARGV[i]), 'line', 'score')
  if f[1] and in_line(ARGV[i]) then
    out[#out + 1] = position_of(ARGV[i], f[1], tonumber(f[2]), now)
    out[#out + 1] = blocked(f[1], now) or ''
  else
    out[#out + 1], out[#out + 2] = -1, ''
  end
end
return out
