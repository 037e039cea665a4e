"""A byte tokenizer: UTF-8 bytes are token ids 0..255; ids from 256 up are special (EOS = 256)."""
from __future__ import annotations


class ByteTokenizer:
    def __init__(self, eos_token_id: int = 256) -> None:
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids) -> str:
        """Byte ids as UTF-8 (invalid sequences replaced); special ids are skipped."""
        return bytes(t for t in token_ids if 0 <= t < 256).decode("utf-8", errors="replace")
