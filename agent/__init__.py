"""The learning parts: config, networks, replay, DQN, Fisher, consolidation, probe, checkpoints, the trainer."""
