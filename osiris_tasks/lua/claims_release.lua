-- Store claims (store/claims.py): delete each claim still holding this writer's token
-- (a claim that expired is left alone). KEYS: the claims. ARGV: the token.
local released = 0
for _, key in ipairs(KEYS) do
  if redis.call('get', key) == ARGV[1] then
    redis.call('del', key)
    released = released + 1
  end
end
return released
