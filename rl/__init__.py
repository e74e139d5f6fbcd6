"""RL: engines, multi-turn rollout, algorithms, learner and trainer. Depends on envs/ and rewards/."""
