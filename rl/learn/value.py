"""The critic for PPO with GAE: a linear value head on a transformer's last hidden state.

The backbone is the policy's own (`algo.critic=head`: one forward pass, shared features,
the value loss also shapes the policy's representation) or a separate copy of the base
model (`algo.critic=separate`: no interference, twice the memory).
"""

from __future__ import annotations

import torch


class ValueHead(torch.nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        # Start at V = 0 everywhere: the first advantages are plain returns, not noise.
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [B, T, H] -> values [B, T] float32, aligned like logprobs.

        values[:, t] is read from the state before token t (hidden state t - 1), the state in which
        token t was sampled; column 0 has no such state and is 0.
        """
        v = self.linear(hidden[:, :-1].float())[..., 0]  # [B, T-1]
        return torch.cat([v.new_zeros(v.shape[0], 1), v], dim=1)
