"""Reinforcement learning: agents, environments and the loop that runs them as one program."""
