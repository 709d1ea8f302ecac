-- A sweeper takes a join past its deadline (adapters/join.py).
-- KEYS[1]: the deadlines' sorted set, KEYS[2]: the join's hash.
-- ARGV[1]: the run_id, ARGV[2]: now (epoch s), ARGV[3]: when the sweeper's lease ends.
-- Returns nil when the join is not due (another sweeper holds it, or it is gone), {} when its
-- hash is gone (nothing to recover), else the hash's fields and values.
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then
  return false
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'taken', 1)
return redis.call('HGETALL', KEYS[2])
