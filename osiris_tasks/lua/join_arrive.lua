-- A part of a run's parallel step arrives at its join (adapters/join.py).
-- KEYS[1]: the join's hash. ARGV[1]: the part's node, ARGV[2]: its update (JSON).
-- Returns {'gone'} when the join is no more (its run was published, or swept), {'waiting'}
-- while parts are missing, {'taken'} when another caller already took the completed join,
-- and {'complete', node, update, ...} to the one caller whose part completes it.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'gone'}
end
redis.call('HSET', KEYS[1], 'part:' .. ARGV[1], ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'taken') == 1 then
  return {'taken'}
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
local parts = {'complete'}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 5) == 'part:' then
    parts[#parts + 1] = string.sub(fields[i], 6)
    parts[#parts + 1] = fields[i + 1]
  end
end
if (#parts - 1) / 2 < size then
  return {'waiting'}
end
redis.call('HSET', KEYS[1], 'taken', 1)
return parts
