"""A policy loss registered from a user module (`imports: [tests.registered_loss]`): PPO's, under another name.

Every process that computes the loss must have imported this module, learner ranks included."""

from rl.learn.losses import ppo, register_policy_loss

register_policy_loss("ppo_from_a_user_module")(ppo)
