"""The live call: its flow, the registry of calls, the socket's limits, the PCM queue."""
