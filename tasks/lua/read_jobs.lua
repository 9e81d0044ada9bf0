-- Read the records of a list of jobs: a conversation's, or a user's history. ARGV: cfg, what, owner, limit.
-- what = 'c:<conversation>' (returns false unless `owner` owns it) or 'h:<user>' (owner = that user).
-- Returns {record, record, ...} oldest first for a conversation, newest first for a history; expired jobs skipped.
local kind, name, owner, limit = string.sub(ARGV[2], 1, 1), string.sub(ARGV[2], 3), ARGV[3], tonumber(ARGV[4])
local ids
if kind == 'c' then
  if redis.call('HGET', P .. 'conv:' .. name .. ':info', 'user') ~= owner then return false end
  ids = redis.call('LRANGE', P .. 'conv:' .. name, -limit, -1)
else
  if name ~= owner then return false end
  ids = redis.call('LRANGE', P .. 'history:' .. name, 0, limit - 1)
end
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGETALL', job_key(id))
  if #raw > 0 then out[#out + 1] = raw end
end
return out
