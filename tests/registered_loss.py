"""Policy losses registered from a user module (`imports: [tests.registered_loss]`): PPO's, under other names.

Every process that computes the loss must have imported this module, learner ranks included."""

import os

import torch.distributed as dist

from rl.learn.losses import ppo, register_policy_loss

register_policy_loss("ppo_from_a_user_module")(ppo)

calls = 0  # this process's calls of the loss below


@register_policy_loss("ppo_that_kills_the_last_rank_in_update_3")
def ppo_that_kills_the_last_rank_in_update_3(inputs, algo):
    """PPO's loss, except that the last learner rank exits at its third call: a rank that dies inside the third update
    (with one micro-batch per update, as the lookup task has)."""
    global calls
    calls += 1
    if calls == 3 and dist.is_initialized() and dist.get_rank() == dist.get_world_size() - 1:
        os._exit(1)
    return ppo(inputs, algo)
