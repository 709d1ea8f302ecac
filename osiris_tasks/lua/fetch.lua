-- The reliable fetch (transport/fetch.py): take the first message of the first non-empty queue and,
-- unless its queue is consumed without acks, record it as unacknowledged in the same call.
-- KEYS: the unacked index, the unacked hash, then the queues' list keys in the order to try.
-- ARGV: delivery time, delivery tag, then for each queue key its queue name as JSON, or "" for
-- a queue consumed without acks. Returns {position of the queue key (from 1), tag or "",
-- message}, or false when every queue is empty.
for i = 3, #KEYS do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local queue = ARGV[i]
    if queue == '' then
      return {i - 2, '', raw}
    end
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[2], ARGV[2], '[' .. raw .. ',"",' .. queue .. ']')
    return {i - 2, ARGV[2], raw}
  end
end
return false
