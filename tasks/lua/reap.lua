-- REAP, on its own: main.py runs it when it sees a worker die (every janitor runs it in its BEAT). See reap() in
-- the prelude. ARGV: cfg. Returns {ids put back, ids ended}.
local back, ended = reap(now_ms())
return {back, ended}
