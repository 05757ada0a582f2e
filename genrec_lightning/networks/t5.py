"""TIGER's backbone: a Hugging Face T5 encoder-decoder built from a `T5Config` (random init, no hub).

Token layout (see `semantic_ids/vocab.py`): PAD 0, EOS 1, BOS 2, then one range per ID level; optional
user tokens (hashed buckets) follow the ID vocabulary. The encoder reads a user's history as
flattened item IDs, the decoder emits the target item's ID one level at a time starting from BOS.
Logits cover the ID vocabulary only, so user tokens can never be generated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from genrec_lightning.semantic_ids import BOS, EOS, PAD


class T5Recommender(nn.Module):
    """T5 over semantic-ID tokens. Defaults follow the token-weighting paper's TIGER setting.

    Args:
        vocab_size: size of the semantic-ID vocabulary (specials + every level's codes), supplied
            by the recommender from its `SemanticIds`; never typed in a config.
        d_model: hidden size.
        d_ff: feed-forward size.
        d_kv: size of one attention head.
        num_heads: attention heads.
        num_encoder_layers: encoder blocks.
        num_decoder_layers: decoder blocks.
        dropout: dropout rate everywhere.
        feed_forward_proj: "relu" (T5 1.0) or "gated-gelu" (T5 1.1).
        relative_attention_num_buckets: T5 relative-position buckets.
        relative_attention_max_distance: distance beyond which positions share a bucket.
        num_user_buckets: extra input tokens for hashed user ids (0 = no user token, the default).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        d_ff: int = 1024,
        d_kv: int = 64,
        num_heads: int = 6,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dropout: float = 0.1,
        feed_forward_proj: str = "relu",
        relative_attention_num_buckets: int = 32,
        relative_attention_max_distance: int = 128,
        num_user_buckets: int = 0,
    ) -> None:
        super().__init__()
        if vocab_size <= BOS:
            raise ValueError(f"vocab_size {vocab_size} leaves no room for ID tokens after the specials")
        if num_user_buckets < 0:
            raise ValueError(f"num_user_buckets must be >= 0, got {num_user_buckets}")
        self.vocab_size = vocab_size
        self.num_user_buckets = num_user_buckets
        self.config = T5Config(
            vocab_size=vocab_size + num_user_buckets,
            d_model=d_model,
            d_ff=d_ff,
            d_kv=d_kv,
            num_heads=num_heads,
            num_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dropout_rate=dropout,
            feed_forward_proj=feed_forward_proj,
            relative_attention_num_buckets=relative_attention_num_buckets,
            relative_attention_max_distance=relative_attention_max_distance,
            pad_token_id=PAD,
            eos_token_id=EOS,
            decoder_start_token_id=BOS,
            bos_token_id=BOS,
        )
        self.model = T5ForConditionalGeneration(self.config)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def embedding(self) -> nn.Embedding:
        """Shared token embedding (inputs and tied output layer); soft IDs mix its rows."""
        return self.model.get_input_embeddings()

    def compile_targets(self) -> list[nn.Module]:
        """The encoder and decoder stacks: `forward`, `encode` and `decode` all run through them."""
        return [self.model.encoder, self.model.decoder]

    def user_tokens(self, users: Tensor) -> Tensor:
        """Hashed user token per user id [B] (bucket = user mod num_user_buckets, as in TIGER)."""
        if self.num_user_buckets == 0:
            raise ValueError("this network has no user tokens (num_user_buckets = 0)")
        return self.vocab_size + users % self.num_user_buckets

    def encode(
        self, input_ids: Tensor | None, attention_mask: Tensor, inputs_embeds: Tensor | None = None
    ) -> Tensor:
        """Encoder states [B, S, d] of token ids [B, S] or of soft input embeddings [B, S, d]."""
        out = self.model.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds
        )
        return out.last_hidden_state

    def forward(
        self,
        input_ids: Tensor | None,
        attention_mask: Tensor,
        decoder_input_ids: Tensor,
        inputs_embeds: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits [B, T, vocab_size] for decoder inputs [B, T] (BOS + target prefix)."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        )
        return out.logits[..., : self.vocab_size]

    def decode(
        self, encoder_states: Tensor, attention_mask: Tensor, decoder_input_ids: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced logits [B, T, vocab_size] and last decoder states [B, T, d] from encoder
        states [B, S, d] (UniGRec pools the encoder states and reads the first decoder state)."""
        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        return out.logits[..., : self.vocab_size], out.decoder_hidden_states[-1]

    @staticmethod
    def shift_right(labels: Tensor) -> Tensor:
        """Decoder inputs for teacher forcing: BOS followed by the labels without their last token."""
        bos = torch.full_like(labels[:, :1], BOS)
        return torch.cat([bos, labels[:, :-1]], dim=1)


__all__ = ["T5Recommender"]
