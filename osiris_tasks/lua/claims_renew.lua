-- Store claims (store/claims.py): extend the TTL (ARGV[2] ms) of each claim still holding this
-- writer's token (ARGV[1]). KEYS: the claims.
local renewed = 0
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then
    redis.call('pexpire', key, ARGV[2])
    renewed = renewed + 1
  end
end
return renewed
