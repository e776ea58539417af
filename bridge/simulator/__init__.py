"""Call simulator: replay a recorded call to a WebSocket URL as a telephony provider would."""
