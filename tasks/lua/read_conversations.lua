-- A user's conversations, most recently active first. ARGV: cfg, user, limit.
-- Returns {id, title, last activity (ms), id, title, ms, ...}; conversations that expired are skipped.
local out = {}
local items = redis.call('ZREVRANGE', P .. 'convs:' .. ARGV[2], 0, tonumber(ARGV[3]) - 1, 'WITHSCORES')
for i = 1, #items, 2 do
  local title = redis.call('HGET', P .. 'conv:' .. items[i] .. ':info', 'title')
  if title then
    out[#out + 1], out[#out + 2], out[#out + 3] = items[i], title, items[i + 1]
  end
end
return out
