"""The text projection of the unCLIP decoder (GLIDE-style conditioning, DALL·E 2 paper §2.1).

Karlo's ``text_proj`` subfolder holds this module. diffusers ships it only inside its deprecated unCLIP
pipeline package, so unclip keeps its own copy with the same class name, config keys and parameter names:
``kakaobrain/karlo-v1-alpha/text_proj`` loads into it unchanged, and ``save_pretrained`` writes the same files.

It turns the CLIP image embedding ``z_i`` (and the CLIP text embedding) into
  * an additive term for the decoder's timestep embedding, and
  * ``clip_extra_context_tokens`` extra tokens prepended to the projected text-encoder hidden states.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class UnCLIPTextProjModel(ModelMixin, ConfigMixin):
    """Projects CLIP embeddings into the decoder's conditioning (time embedding + context tokens)."""

    @register_to_config
    def __init__(
        self,
        *,
        clip_extra_context_tokens: int = 4,
        clip_embeddings_dim: int = 768,
        time_embed_dim: int,
        cross_attention_dim: int,
    ):
        super().__init__()
        # The embedding that stands for "no image embedding" in the decoder's unconditional branch.
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(clip_embeddings_dim))
        self.embedding_proj = nn.Linear(clip_embeddings_dim, time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(clip_embeddings_dim, time_embed_dim)
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.clip_extra_context_tokens_proj = nn.Linear(
            clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim
        )
        self.encoder_hidden_states_proj = nn.Linear(clip_embeddings_dim, cross_attention_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cross_attention_dim)

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        prompt_embeds: torch.Tensor,
        text_encoder_hidden_states: torch.Tensor,
        do_classifier_free_guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(encoder_hidden_states, additive_time_embeddings)`` for the decoder.

        With ``do_classifier_free_guidance`` the text inputs hold ``[uncond; cond]`` (2B rows) while
        ``image_embeddings`` holds the B conditional rows; the learned unconditional embedding is
        prepended for the first B rows, as in the reference implementation.
        """
        if do_classifier_free_guidance:
            uncond = self.learned_classifier_free_guidance_embeddings.unsqueeze(0)
            uncond = uncond.expand(image_embeddings.shape[0], -1).to(image_embeddings.dtype)
            image_embeddings = torch.cat([uncond, image_embeddings], dim=0)
        if image_embeddings.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(
                f"text_proj got {image_embeddings.shape[0]} image embeddings for {prompt_embeds.shape[0]} prompts"
            )
        batch_size = prompt_embeds.shape[0]
        time_embeddings = self.embedding_proj(prompt_embeds) + self.clip_image_embeddings_project_to_time_embeddings(
            image_embeddings
        )
        extra_tokens = self.clip_extra_context_tokens_proj(image_embeddings)
        extra_tokens = extra_tokens.reshape(batch_size, -1, self.clip_extra_context_tokens).permute(0, 2, 1)
        hidden = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_encoder_hidden_states))
        return torch.cat([extra_tokens, hidden], dim=1), time_embeddings
