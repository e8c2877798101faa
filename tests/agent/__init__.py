"""Agent SDK, PTY runner, demo and echo agents."""
