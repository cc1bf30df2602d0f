"""Python clients of the agent."""
