"""Prompts and observations as token ids, with or without a chat template.

Token-in/token-out: the history is never re-rendered. The prompt is rendered
once; each observation is rendered as its own piece of tokens and appended after
the tokens the policy sampled. For a chat model the piece is what the template
puts between an assistant message and the next generation prompt, found once by
rendering a conversation with sentinel texts and reading off the difference.
"""

from __future__ import annotations

from envs.base import Prompt

_ACTION, _OBS = "\x01ACTION\x01", "\x01OBSERVATION\x01"


class TurnFormatter:
    def __init__(self, tokenizer, observation_role: str = "user"):
        self.tokenizer = tokenizer
        self.chat = tokenizer.chat_template is not None
        self._wrapper: dict[bool, int] = {}  # wrapper_tokens(ended_with_eos), computed once
        if self.chat:
            self._read_template(observation_role)

    def _read_template(self, role: str) -> None:
        tok = self.tokenizer
        history = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _ACTION}]
        base = tok.apply_chat_template(history, tokenize=False)
        full = tok.apply_chat_template(
            history + [{"role": role, "content": _OBS}], tokenize=False, add_generation_prompt=True
        )
        if not full.startswith(base):
            raise ValueError("the chat template re-renders earlier turns; it cannot be used token-in/token-out")
        # What closes an assistant turn (e.g. "<|im_end|>\n"), then the observation's wrapping.
        self.turn_close = base[base.index(_ACTION) + len(_ACTION) :]
        self.obs_before, self.obs_after = full[len(base) :].split(_OBS)
        eos = tok.eos_token or ""
        # When the policy ended its turn with EOS it already wrote that part of the closing text.
        self.turn_close_after_eos = (
            self.turn_close[len(eos) :] if eos and self.turn_close.startswith(eos) else self.turn_close
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if self.chat:
            return self._encode(
                self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            )
        return self._encode("\n".join(m["content"] for m in messages))

    def wrapper_tokens(self, ended_with_eos: bool) -> int:
        """How many tokens the template puts around an observation (0 without a chat template)."""
        if ended_with_eos not in self._wrapper:
            self._wrapper[ended_with_eos] = len(self.observation_ids("", ended_with_eos, 0))
        return self._wrapper[ended_with_eos]

    def observation_ids(self, observation: str, ended_with_eos: bool, max_tokens: int) -> list[int]:
        """Tokens shown after an action; the observation text itself is cut to `max_tokens`."""
        body = self._encode(observation)[: max(max_tokens, 0)]
        if not self.chat:
            return body
        close = self.turn_close_after_eos if ended_with_eos else self.turn_close
        return self._encode(close + self.obs_before) + body + self._encode(self.obs_after)
