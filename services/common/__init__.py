"""Code every service shares."""

from services.common import kafka_loop, kafka_rejoin

# Before any Kafka client exists: kafka-python 3.0.12's loop can miss a wake-up (see kafka_loop.py), and
# its consumers can drop a rebalance's result (see kafka_rejoin.py).
kafka_loop.mend()
kafka_rejoin.mend()
