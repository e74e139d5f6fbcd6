"""Learning a reward from pairwise preferences over trajectory segments (Knox et al., 2022/2024).

Two models of why a person prefers segment s1 over s2 (logistic = 1 / (1 + e^-z)):

  partial return   P(s1 > s2) = logistic( R(s1) - R(s2) ),   R(s) = sum_t g^t r(s_t, a_t)
  regret           P(s1 > s2) = logistic( A(s1) - A(s2) ),   A(s) = sum_t g^t A*_r(s_t, a_t)

with A*_r(s, a) = Q*_r(s, a) - V*_r(s) <= 0 the optimal advantage. For deterministic
transitions the advantage sum telescopes: A(s) = R(s) + g^k V*(s_k) - V*(s_0). So a
person answering by regret judges the *decisions* in a segment, not its luck.

Both fits here learn a linear reward r(s, a) = w . phi(s, a) over a few features:

  fit_partial_return   logistic regression on the segments' feature sums (convex; Newton's method)
  fit_regret           A(s) is linear in w for a fixed optimal policy pi*_w:
                           A(s) = w . (F(s) + g^k mu(s_k) - mu(s_0)),  mu = discounted features of pi*_w
                       (the envelope theorem: V*_w's gradient is mu), so each step is a Newton step of
                       a logistic regression on those features, with the policy recomputed after it.

What each shows: the partial-return fit is a reward. The regret fit is a reward too, but what the
preferences pinned down is its optimal advantage Â* (shown alongside); fit the partial-return model
to regret-generated preferences with a flexible g and g becomes Â*, not a reward (Knox et al. 2024).

The synthetic world (`GridMDP`) generates preferences from a known reward under either model, to
check that each fit recovers the true advantage ordering best on its own model's data (`demo`).
For recorded text episodes there is no transition model, so `fit_trajectory_preferences` fits the
linear per-turn model only, and records whether the user's preferences mean a reward or an advantage;
the `learned` reward (registered below) turns the saved file into a training reward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from envs.base import Trajectory
from envs.jsonl import read_jsonl
from rewards.base import Reward, register_reward
from rewards.lab import kendall_tau

# ------------------------------------------------------------------ a small deterministic world

MOVES = [(-1, 0), (1, 0), (0, -1), (0, 1)]  # up, down, left, right
FEATURES = ["goal", "lava", "mud", "step"]  # what entering a cell costs or earns


@dataclass
class GridMDP:
    """A size x size grid; entering the goal ends the episode (then an absorbing state, zero features)."""

    size: int = 5
    gamma: float = 0.9
    true_w: tuple = (1.0, -1.0, -0.3, -0.05)  # the reward preferences are generated from, per FEATURES
    seed: int = 0
    cells: np.ndarray = field(init=False)  # cell type per state: 0 plain, 1 lava, 2 mud, 3 goal
    next_state: np.ndarray = field(init=False)  # (S, A) -> next state; the last state is absorbing
    phi: np.ndarray = field(init=False)  # (S, A, d) features of each transition

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        n = self.size * self.size
        self.cells = rng.choice([0, 0, 0, 1, 2, 2], size=n)
        self.cells[n - 1] = 3  # goal in the bottom-right corner
        self.cells[0] = 0
        absorbing = n
        self.next_state = np.full((n + 1, 4), absorbing)
        self.phi = np.zeros((n + 1, 4, len(FEATURES)))
        for s in range(n):
            if self.cells[s] == 3:  # standing on the goal: every action ends the episode, for free
                continue
            row, col = divmod(s, self.size)
            for a, (dr, dc) in enumerate(MOVES):
                r, c = min(max(row + dr, 0), self.size - 1), min(max(col + dc, 0), self.size - 1)
                s2 = r * self.size + c
                self.next_state[s, a] = absorbing if self.cells[s2] == 3 else s2
                kind = self.cells[s2]
                self.phi[s, a] = [kind == 3, kind == 1, kind == 2, 1.0]

    @property
    def live_states(self) -> np.ndarray:
        """States where a decision matters (not the goal, not the absorbing state)."""
        return np.flatnonzero(self.cells != 3)


def optimal_values(mdp: GridMDP, w: np.ndarray, iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Value iteration for r = phi . w: returns (Q*, V*); gamma^300 is below 1e-13 at gamma 0.9."""
    r = mdp.phi @ w
    v = np.zeros(len(mdp.next_state))
    for _ in range(iters):
        q = r + mdp.gamma * v[mdp.next_state]
        v = q.max(1)
    return q, v


def advantages(mdp: GridMDP, w: np.ndarray) -> np.ndarray:
    """A*(s, a) = Q*(s, a) - V*(s) for r = phi . w, shape (S, A)."""
    q, v = optimal_values(mdp, w)
    return q - v[:, None]


def policy_features(mdp: GridMDP, w: np.ndarray, iters: int = 300) -> np.ndarray:
    """mu(s) = discounted feature sum of the greedy optimal policy from s, shape (S, d): the gradient of V*_w(s)."""
    q, _ = optimal_values(mdp, w)
    pi = q.argmax(1)
    states = np.arange(len(pi))
    mu = np.zeros((len(pi), mdp.phi.shape[2]))
    for _ in range(iters):
        mu = mdp.phi[states, pi] + mdp.gamma * mu[mdp.next_state[states, pi]]
    return mu


# ------------------------------------------------------------------ segments and preferences


@dataclass
class Segments:
    """k-step segments of a uniformly random policy from uniformly random live states."""

    states: np.ndarray  # (N, k + 1) the states visited, the last one after the last action
    actions: np.ndarray  # (N, k)


def sample_segments(mdp: GridMDP, n: int, k: int, rng: np.random.Generator) -> Segments:
    states = np.zeros((n, k + 1), int)
    states[:, 0] = rng.choice(mdp.live_states, size=n)
    actions = rng.integers(0, 4, size=(n, k))
    for t in range(k):
        states[:, t + 1] = mdp.next_state[states[:, t], actions[:, t]]
    return Segments(states, actions)


def discounted_features(mdp: GridMDP, seg: Segments) -> np.ndarray:
    """F(s) = sum_t gamma^t phi(s_t, a_t), shape (N, d): R(s) = w . F(s)."""
    k = seg.actions.shape[1]
    disc = mdp.gamma ** np.arange(k)
    return np.einsum("t,ntd->nd", disc, mdp.phi[seg.states[:, :-1], seg.actions])


def regret_features(mdp: GridMDP, seg: Segments, w: np.ndarray) -> np.ndarray:
    """G(s) = F(s) + gamma^k mu(s_k) - mu(s_0), so that A(s) = w . G(s) while pi*_w stays the same."""
    k = seg.actions.shape[1]
    mu = policy_features(mdp, w)
    return discounted_features(mdp, seg) + mdp.gamma**k * mu[seg.states[:, -1]] - mu[seg.states[:, 0]]


def synthesize(mdp: GridMDP, model: str, n_pairs: int, k: int = 3, beta: float = 5.0, seed: int = 0):
    """Preference pairs labelled by `model` ("partial_return" | "regret") under the true reward.

    Returns (first segments, second segments, labels): label 1 when the first is preferred, drawn
    with probability logistic(beta * (score1 - score2)); beta sets how noisy the labeller is.
    """
    rng = np.random.default_rng(seed)
    w = np.array(mdp.true_w)
    s1, s2 = sample_segments(mdp, n_pairs, k, rng), sample_segments(mdp, n_pairs, k, rng)
    if model == "partial_return":
        diff = (discounted_features(mdp, s1) - discounted_features(mdp, s2)) @ w
    elif model == "regret":
        diff = (regret_features(mdp, s1, w) - regret_features(mdp, s2, w)) @ w
    else:
        raise ValueError(f"model must be 'partial_return' or 'regret', got {model!r}")
    labels = (rng.random(n_pairs) < 1 / (1 + np.exp(-beta * diff))).astype(float)
    return s1, s2, labels


# ------------------------------------------------------------------ fitting


def log_likelihood(x: np.ndarray, labels: np.ndarray, w: np.ndarray, l2: float) -> float:
    """Mean log P(labels) under logistic(x . w), minus l2 |w|^2 / 2."""
    z = x @ w
    return float(np.mean(labels * -np.logaddexp(0, -z) + (1 - labels) * -np.logaddexp(0, z)) - l2 * w @ w / 2)


def newton_step(x: np.ndarray, labels: np.ndarray, w: np.ndarray, l2: float) -> np.ndarray:
    """One Newton step of L2-regularised logistic regression (x: (N, d) feature differences)."""
    p = 1 / (1 + np.exp(-(x @ w)))
    grad = x.T @ (labels - p) / len(x) - l2 * w
    hess = (x * (p * (1 - p))[:, None]).T @ x / len(x) + l2 * np.eye(len(w))
    return w + np.linalg.solve(hess, grad)


def fit_logistic(x: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Maximum-likelihood w of P(label = 1) = logistic(x . w), by Newton's method (convex: converges)."""
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        w_new = newton_step(x, labels, w, l2)
        if np.max(np.abs(w_new - w)) < 1e-10:
            return w_new
        w = w_new
    return w


def fit_partial_return(mdp: GridMDP, s1: Segments, s2: Segments, labels: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Reward weights under the partial-return model: logistic regression on F(s1) - F(s2)."""
    return fit_logistic(discounted_features(mdp, s1) - discounted_features(mdp, s2), labels, l2)


def fit_regret(
    mdp: GridMDP, s1: Segments, s2: Segments, labels: np.ndarray, l2: float = 1e-3, iters: int = 50
) -> np.ndarray:
    """Reward weights under the regret model.

    Starts from the partial-return fit. Each step linearises A(s) = w . G_w(s) at the current
    optimal policy, takes a Newton step, and keeps it only if the true regret likelihood (policy
    recomputed) improves, halving it otherwise: the likelihood never goes down.
    """

    def objective(w):
        x = regret_features(mdp, s1, w) - regret_features(mdp, s2, w)
        return log_likelihood(x, labels, w, l2), x

    w = fit_partial_return(mdp, s1, s2, labels, l2)
    best, x = objective(w)
    for _ in range(iters):
        step = newton_step(x, labels, w, l2) - w
        for _ in range(10):
            value, x_new = objective(w + step)
            if value > best:
                break
            step /= 2
        else:
            break  # no step improves: a (local) optimum
        improvement, best, w, x = value - best, value, w + step, x_new
        if improvement < 1e-10:
            break
    return w


# ------------------------------------------------------------------ evaluation


def advantage_tau(mdp: GridMDP, w: np.ndarray) -> float:
    """Kendall tau-b between the true A* and the A* of reward w, over every live (state, action)."""
    live = mdp.live_states
    return kendall_tau(advantages(mdp, np.array(mdp.true_w))[live].ravel(), advantages(mdp, w)[live].ravel())


def policy_regret(mdp: GridMDP, w: np.ndarray) -> float:
    """Mean over live states of V*_true(s) - V^pi(s), pi greedy for reward w: what acting on the fit loses."""
    true_w = np.array(mdp.true_w)
    q_fit, _ = optimal_values(mdp, w)
    pi = q_fit.argmax(1)
    states = np.arange(len(pi))
    r = (mdp.phi @ true_w)[states, pi]
    v_pi = np.zeros(len(pi))
    for _ in range(300):
        v_pi = r + mdp.gamma * v_pi[mdp.next_state[states, pi]]
    _, v_star = optimal_values(mdp, true_w)
    return float((v_star - v_pi)[mdp.live_states].mean())


def demo(n_pairs: int = 3000, seed: int = 0, mdp: GridMDP | None = None) -> dict:
    """Both fits on data from both models: advantage-order tau, policy regret, and the weights found."""
    mdp = mdp or GridMDP(seed=seed)
    out = {"features": FEATURES, "true_w": list(mdp.true_w), "n_pairs": n_pairs, "data": {}}
    for model in ("partial_return", "regret"):
        s1, s2, labels = synthesize(mdp, model, n_pairs, seed=seed + 1)
        fits = {"partial_return": fit_partial_return(mdp, s1, s2, labels), "regret": fit_regret(mdp, s1, s2, labels)}
        out["data"][model] = {
            name: {
                "w": w.round(4).tolist(),
                "advantage_tau": advantage_tau(mdp, w),
                "policy_regret": policy_regret(mdp, w),
            }
            for name, w in fits.items()
        }
    return out


def format_demo(results: dict) -> str:
    lines = [
        f"true w {dict(zip(results['features'], results['true_w']))}, {results['n_pairs']} pairs per data set",
        f"{'data':<16} {'fit':<16} {'tau(A*)':>8} {'regret':>8}  w",
    ]
    for data, fits in results["data"].items():
        for fit, r in fits.items():
            lines.append(f"{data:<16} {fit:<16} {r['advantage_tau']:8.4f} {r['policy_regret']:8.4f}  {r['w']}")
    lines.append(
        "tau(A*): Kendall tau-b between the true A* and the fit's A*, over live (state, action); "
        "regret: mean value\n"
        "lost by acting greedily on the fit. Partial-return w is the reward r = w . phi; "
        "regret w is a reward too,\n"
        "but what the preferences pinned down is its optimal advantage A*_w (hence its free 'goal' weight)."
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ recorded episodes -> a training reward


def turn_features(trajectory: Trajectory, keys: list[str]) -> np.ndarray:
    """(turns, d): info[key] of each turn as a float (a missing key or a bool False is 0)."""
    return np.array([[float(t.info.get(k) or 0.0) for k in keys] for t in trajectory.turns]).reshape(-1, len(keys))


def fit_trajectory_preferences(path: str, keys: list[str], means: str = "reward", l2: float = 1e-3) -> dict:
    """Fit w of a per-turn score w . info[keys] to preference lines {"a", "b", "label"} (trajectory dicts).

    The loss is the partial-return one (summed per-turn scores). `means` records what the fit is:
    "reward" when the preferences judged outcomes, "advantage" when they judged decisions (regret
    model: the sum is then Â*, Knox et al.); either way the `learned` reward adds it per turn,
    as a shaped reward in the advantage case.
    """
    diffs, labels = [], []
    for d in read_jsonl(path):
        a, b = (Trajectory.from_dict(d[k].get("trajectory", d[k])) for k in ("a", "b"))
        diffs.append(turn_features(a, keys).sum(0) - turn_features(b, keys).sum(0))
        labels.append(float(d["label"]))
    w = fit_logistic(np.array(diffs), np.array(labels), l2)
    return {"kind": "linear_turn", "features": keys, "weights": w.tolist(), "means": means, "pairs": len(labels)}


def format_model(model: dict) -> str:
    what = "optimal advantage A*(turn)" if model["means"] == "advantage" else "reward r(turn)"
    terms = " + ".join(f"{w:.4f}*{k}" for k, w in zip(model["features"], model["weights"]))
    return f"learned {what} = {terms}   ({model['pairs']} pairs)"


@register_reward("learned")
def learned(path: str):
    """Process reward from a fitted model file (python -m rewards fit): w . info[features] on each turn."""
    model = json.loads(open(path).read())
    keys, w = model["features"], np.array(model["weights"])

    def fn(trajectory: Trajectory) -> Reward:
        return Reward((turn_features(trajectory, keys) @ w).tolist(), 0.0)

    return fn
