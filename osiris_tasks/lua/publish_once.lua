-- Publish an event unless its marker says it was published; mark it. One round trip, atomic:
-- no other publisher of the same event can slip between the check and the mark.
-- KEYS[1] the event's marker; ARGV[1] the channel, ARGV[2] the message, ARGV[3] marker TTL (s).
-- Returns the number of receivers, or -1 if the event had been published already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local receivers = redis.call('PUBLISH', ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], 1, 'EX', ARGV[3])
return receivers
