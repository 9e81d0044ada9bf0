-- Submit one job. ARGV: cfg, id, level, user, line (model or alias), conversation ('' = none), idempotency key
-- ('' = none), title of a new conversation, how many jobs this user may have waiting, field, value, ...
-- Returns {1, id, position} | {0, refusal code} | {2, id of the job this idempotency key already made}.
-- One step, so that a refused job leaves nothing behind and the owner check can't race another submit.
--
-- Fair share (start-time fair queuing): within a level, each job gets a virtual start tag,
--   tag = max(base, last[level][user]) + 1
-- where last is the tag of the user's latest waiting job and base is where the line is now: the level's clock
-- V (the tag of the job most recently admitted at this level), or just before the head of this line if that
-- is behind V (a line served slowly, e.g. by a busy server). A user with 100 waiting jobs holds tags base+1 ..
-- base+100; a newcomer's single job gets base+1 and starts after at most one of theirs. The score keeps the
-- level first (priority stays strict), then the tag, then the submission order; a job keeps its score for life.
local id, level, user, line, conversation, idem = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local idem_key = P .. 'idem:' .. user .. ':' .. idem
if idem ~= '' then
  local earlier = redis.call('GET', idem_key)
  if earlier then return {2, earlier} end
end
local now = now_ms()
local served = false
for _, b in ipairs(CFG.backends) do
  if model_for(backend_view(b, now), line) then
    served = true
    break
  end
end
if not served then return {0, 'unknown_model'} end
if redis.call('ZCARD', P .. 'waiting') >= CFG.max_waiting then return {0, 'queue_full'} end
if (tonumber(redis.call('HGET', P .. 'user_waiting', user)) or 0) >= tonumber(ARGV[9]) then
  return {0, 'too_many_waiting'}
end
local info = P .. 'conv:' .. conversation .. ':info'
if conversation ~= '' then
  local owner = redis.call('HGET', info, 'user')
  if owner and owner ~= user then return {0, 'conversation_not_found'} end
end

local clock = tonumber(redis.call('HGET', P .. 'vclock', level)) or 0
local base = clock
local head = redis.call('ZRANGEBYSCORE', line_key(line), num(level * LEVEL_SPAN), num((level + 1) * LEVEL_SPAN - 1),
                        'WITHSCORES', 'LIMIT', 0, 1)
if head[2] then base = math.min(base, tag_of(tonumber(head[2])) - 1) end
local tag = math.max(base, tonumber(redis.call('HGET', P .. 'last:' .. level, user)) or 0) + 1
redis.call('HSET', P .. 'last:' .. level, user, tag)
local seq = redis.call('INCR', P .. 'seq')
local score = level * LEVEL_SPAN + tag * TAG_SPAN + seq % TAG_SPAN

local job = job_key(id)
redis.call('HSET', job, 'id', id, 'user', user, 'line', line, 'conversation_id', conversation, 'score', num(score),
           'epoch', 0, 'attempts', 0, 'progress', 0, 'status', 'queued', 'phase', 'queued', 'created_at', now,
           unpack(ARGV, 10))
join_line(id, score, line, user, now)
redis.call('HINCRBY', P .. 'totals', 'submitted', 1)
if idem ~= '' then redis.call('SET', idem_key, id, 'EX', CFG.idempotency_s) end

local topics = {'*queue'}  -- what changed, published once at the end
if conversation ~= '' then
  local jobs = P .. 'conv:' .. conversation
  if redis.call('HSETNX', info, 'user', user) == 1 then
    redis.call('HSET', info, 'title', ARGV[8], 'created_at', now)
  end
  redis.call('HSET', job, 'turn', redis.call('RPUSH', jobs, id))  -- turn 1 has no context to read
  redis.call('EXPIRE', jobs, CFG.retention_s)
  redis.call('EXPIRE', info, CFG.retention_s)
  local convs = P .. 'convs:' .. user
  redis.call('ZADD', convs, now, conversation)
  redis.call('ZREMRANGEBYSCORE', convs, '-inf', now - CFG.retention_s * 1000)
  redis.call('ZREMRANGEBYRANK', convs, 0, -CFG.conversations_kept - 1)
  redis.call('EXPIRE', convs, CFG.retention_s)
  topics[#topics + 1] = 'c:' .. conversation
end
if redis.call('HGET', job, 'kind') ~= 'suggest' then  -- chats and the API doors' jobs are in the history
  local history = P .. 'history:' .. user
  redis.call('LPUSH', history, id)
  redis.call('LTRIM', history, 0, CFG.history_size - 1)
  redis.call('EXPIRE', history, CFG.retention_s)
  topics[#topics + 1] = 'u:' .. user
end

redis.call('LPUSH', P .. 'wake', id)  -- a standby ticket admits it now
redis.call('LTRIM', P .. 'wake', 0, 99)
emit(id, 'status', snapshot(job), 0)
changed(unpack(topics))
return {1, id, position_of(id, line, score, now)}
