-- The broker's ack emulation (transport/broker.py): forget an acked message.
-- KEYS: the unacked index, the unacked hash. ARGV: tag.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
