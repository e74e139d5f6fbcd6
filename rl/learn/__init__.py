"""Learning: RL math, credit assignment, losses, the learner for one rank or many, LoRA, the critic."""
