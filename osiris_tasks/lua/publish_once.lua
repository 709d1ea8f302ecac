-- Publish an event unless its marker says it was published; mark it; with a stream name, also
-- append it to that stream (OSIRIS_EVENTS_STREAM). One round trip, atomic: no other publisher
-- of the same event can slip between the check and the mark, and the stream gets it once.
-- KEYS[1] the event's marker; ARGV[1] the channel, ARGV[2] the message, ARGV[3] marker TTL (s),
-- ARGV[4] the events stream ('' for none), ARGV[5] its approximate MAXLEN ('0' for no cap),
-- ARGV[6] the event id.
-- Returns the number of receivers, or -1 if the event had been published already.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
local receivers = redis.call('PUBLISH', ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], 1, 'EX', ARGV[3])
if ARGV[4] ~= '' then
  local fields = {'event_id', ARGV[6], 'channel', ARGV[1], 'event', ARGV[2]}
  if ARGV[5] ~= '0' then
    redis.call('XADD', ARGV[4], 'MAXLEN', '~', ARGV[5], '*', unpack(fields))
  else
    redis.call('XADD', ARGV[4], '*', unpack(fields))
  end
end
return receivers
