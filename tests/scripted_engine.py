"""An engine that plays a script: where what a test examines is the env or the retriever, not the model."""

from rl.rollout.engine import Generation


class ScriptedEngine:
    """Answers turn t of every episode with `actions[t]`, through the engine interface the rollout uses;
    `on_turn(t)` runs as each answer is given (to break something at a chosen turn)."""

    prompt_tokens = cached_tokens = version = 0

    def __init__(self, tokenizer, actions: list[str], on_turn=None):
        self.tokenizer, self.actions, self.on_turn, self.asked = tokenizer, actions, on_turn, []

    def add(self, key, request, params):
        self.asked.append(key)

    def in_flight(self):
        return len(self.asked)

    def step(self):
        asked, self.asked = self.asked, []
        out = []
        for episode, turn in asked:
            if self.on_turn is not None:
                self.on_turn(turn)
            ids = self.tokenizer.encode(self.actions[turn], add_special_tokens=False)
            out.append(((episode, turn), Generation(list(ids), [0.0] * len(ids), "stop", [0] * len(ids))))
        return out

    def end_session(self, session):
        pass
