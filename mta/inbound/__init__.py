"""The inbound side: bounces and feedback-loop reports that arrive as mail."""
