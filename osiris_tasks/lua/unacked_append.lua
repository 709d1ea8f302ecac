-- The broker's ack emulation (transport/broker.py): record a delivered message as unacked.
-- KEYS: the unacked index (sorted set), the unacked hash. ARGV: delivery time, tag, message.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
