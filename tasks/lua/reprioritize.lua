-- Move a waiting job to another priority level (the admin board). ARGV: cfg, id, level.
-- It gets a tag at the new level as if submitted there now (fair share still applies to its user).
-- Returns 1, or 0 when the job is not waiting.
local id, level = ARGV[2], tonumber(ARGV[3])
local job = job_key(id)
local f = redis.call('HMGET', job, 'line', 'user', 'score')
if not f[3] or not redis.call('ZSCORE', P .. 'waiting', id) then return 0 end
local retry = redis.call('ZSCORE', P .. 'backoff', id)
leave_line(id, f[1], f[2])
local clock = tonumber(redis.call('HGET', P .. 'vclock', level)) or 0
local tag = math.max(clock, tonumber(redis.call('HGET', P .. 'last:' .. level, f[2])) or 0) + 1
redis.call('HSET', P .. 'last:' .. level, f[2], tag)
local score = level * LEVEL_SPAN + tag * TAG_SPAN + tonumber(f[3]) % TAG_SPAN
local now = now_ms()
redis.call('HSET', job, 'score', num(score), 'priority', ({[0] = 'high', [1] = 'normal', [2] = 'low'})[level])
join_line(id, score, f[1], f[2], now)
if retry then redis.call('ZADD', P .. 'backoff', retry, id) end
emit(id, 'status', snapshot(job), redis.call('HGET', job, 'epoch'))
changed('*queue', 'u:' .. f[2])
return 1
