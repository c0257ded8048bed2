"""Code every service shares."""

from services.common import kafka_loop

# Before any Kafka client exists: kafka-python 3.0.12's loop can miss a wake-up (see kafka_loop.py).
kafka_loop.mend()
