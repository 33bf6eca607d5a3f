"""The demo model's networks: vision encoder, speech encoder, embedding, and a Phi3 decoder.

Exported graphs (export_demo.py) and training (train_demo.py) use these same modules.

vision.onnx  pixel_values [n_img, n_crops, 3, 448, 448] (crop 0 = the 448x448 global view),
             image_attention_mask [n_img, n_crops, 32, 32], image_sizes [n_img, 2]
             -> image_features [sum(num_img_tokens), H]
  A small CNN reads the global view (average-pooled to 224x224, then 4x4 patches); its feature
  vector is projected into the LAST `VISION_INFO_ROWS` rows of each image's block. The other rows
  of the block (there are 477..1841 per image in phi4mm's layout) carry one learned "pad" vector:
  the decoder learns to ignore them. The row count per image is recomputed from the mask and
  image_sizes with the processor's formula (256 + 1 + sum(mask[::2, ::2]) + sum(mask[::2, 0]) + 16
  over the image's own crops), so it equals ORT-GenAI's num_img_tokens.

speech.onnx  audio_embeds [n_aud, T, 80] (log-mel), audio_attention_mask [n_aud, T] (bool),
             audio_sizes [n_aud] (= ceil(frames / 8)), audio_projection_mode [1]
             -> audio_features [sum(audio_sizes), H]
  A 1-D conv stack (x8 time reduction) with masked attention + max pooling summarises the
  utterance into `AUDIO_INFO_ROWS` rows at the end of each audio block; the mode (1 vision,
  2 speech, 3 both) adds a learned vector to every row.

embedding.onnx  input_ids [b, s] (int64), image_features [N_img, H], audio_features [N_aud, H]
                -> inputs_embeds [b, s, H]
  Token table lookup; positions holding 200010 / 200011 take the next image / audio feature row.

decoder  Phi3 (HF Phi3ForCausalLM) built by ORT-GenAI's builder with exclude_embeds=true.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from demo_common import AUDIO_TOKEN_ID, IMAGE_TOKEN_ID, VOCAB_SIZE

HIDDEN = 128
# rope_theta 500000 (as Llama 3) rather than Phi3's 10000: the answer copies the camera name from
# 500..3700 positions back, across the image's placeholder rows; with a larger base more of the
# rotary frequency pairs stay nearly constant over that distance, so content matching still works.
DECODER = dict(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=384, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5,
               max_position_embeddings=8192)
VISION_INFO_ROWS = 8
AUDIO_INFO_ROWS = 2
VISION_FEAT = 128
SPEECH_FEAT = 128
N_MEL = 80
# Fixed log-mel normalisation (ln(max(power * mel, 1)) of int16-scaled audio lies in ~[0, 22]).
MEL_MEAN, MEL_STD = 9.0, 4.0


def conv_bn(cin, cout, k, s, p=None, dims=2):
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return nn.Sequential(conv(cin, cout, k, s, k // 2 if p is None else p, bias=False), bn(cout), nn.ReLU(inplace=True))


class VisionBackbone(nn.Module):
    """224x224 global view -> feature vector. Trained first with fact heads (train_demo.py)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            conv_bn(3, 24, 4, 4, 0),      # 56
            conv_bn(24, 32, 3, 1),
            conv_bn(32, 48, 3, 2),        # 28
            conv_bn(48, 64, 3, 1),
            conv_bn(64, 96, 3, 2),        # 14
            conv_bn(96, 128, 3, 1),
            conv_bn(128, 128, 3, 2),      # 7
        )
        self.fc = nn.Sequential(nn.Linear(256, VISION_FEAT), nn.ReLU(inplace=True))

    def forward(self, x224):
        h = self.net(x224)
        h = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.fc(h)


class VisionHeads(nn.Module):
    """Auxiliary fact classifiers used only to train the backbone."""

    def __init__(self):
        super().__init__()
        self.present = nn.Linear(VISION_FEAT, 3)
        self.lamp = nn.Linear(VISION_FEAT, 4)
        self.gauge = nn.Linear(VISION_FEAT, 3)
        self.boxes = nn.Linear(VISION_FEAT, 4)

    def forward(self, f):
        return self.present(f), self.lamp(f), self.gauge(f), self.boxes(f)


class VisionProjector(nn.Module):
    """Feature vector -> VISION_INFO_ROWS decoder-space rows, plus the pad row. Trained with the decoder."""

    def __init__(self):
        super().__init__()
        self.info = nn.Linear(VISION_FEAT, VISION_INFO_ROWS * HIDDEN)
        self.pad = nn.Parameter(torch.randn(HIDDEN) * 0.02)

    def forward(self, f):
        return self.info(f).view(f.shape[0], VISION_INFO_ROWS, HIDDEN)


def place_rows(counts, info, pad):
    """Lay out blocks of `counts[i]` rows: the last info.shape[1] rows of block i are info[i], the
    rest are `pad`. counts: int64 [n], info: [n, K, H], pad: [H] or [n, H] -> [sum(counts), H]."""
    n, k, h = info.shape
    ends = torch.cumsum(counts, 0)
    total = ends[-1:].sum()  # 0-d, stays a graph value in export
    r = torch.arange(total, dtype=torch.int64)
    block = (r.unsqueeze(1) >= ends.unsqueeze(0)).to(torch.int64).sum(1)  # which block each row is in
    slot = r - (ends.index_select(0, block) - k)  # >= 0 for the info rows
    is_info = slot >= 0
    flat = info.reshape(n * k, h)
    rows = flat.index_select(0, block * k + slot.clamp(min=0))
    pad_rows = pad.unsqueeze(0).expand(rows.shape[0], h) if pad.dim() == 1 else pad.index_select(0, block)
    return torch.where(is_info.unsqueeze(1), rows, pad_rows)


def phi4_image_token_counts(image_attention_mask, image_sizes):
    """num_img_tokens per image, from the processor's outputs (see module doc)."""
    crops_h = image_sizes[:, 0] // 448
    crops_w = image_sizes[:, 1] // 448
    n_crops = crops_h * crops_w
    m = image_attention_mask[:, 1:]  # sub-crops (crop 0 is the global view)
    c = torch.arange(m.shape[1], dtype=torch.int64).unsqueeze(0)
    valid = (c < n_crops.unsqueeze(1)).to(m.dtype)
    first_col = ((c % crops_w.unsqueeze(1)) == 0).to(m.dtype)
    s_grid = (m[:, :, 0::2, 0::2].sum(dim=(2, 3)) * valid).sum(1)
    s_col = (m[:, :, 0::2, 0].sum(dim=2) * valid * first_col).sum(1)
    return (s_grid + s_col).round().to(torch.int64) + (256 + 1 + 16)


class VisionEncoder(nn.Module):
    def __init__(self, backbone=None, proj=None):
        super().__init__()
        self.backbone = backbone or VisionBackbone()
        self.proj = proj or VisionProjector()

    def forward(self, pixel_values, image_attention_mask, image_sizes):
        g = pixel_values[:, 0]                       # global views [n, 3, 448, 448]
        x = F.avg_pool2d(g, 2)                        # 224x224
        info = self.proj(self.backbone(x))
        counts = phi4_image_token_counts(image_attention_mask, image_sizes)
        return place_rows(counts, info, self.proj.pad)


class SpeechBackbone(nn.Module):
    """log-mel [n, T, 80] + frame mask [n, T] -> utterance vector [n, SPEECH_FEAT]."""

    def __init__(self):
        super().__init__()
        d = 128
        self.convs = nn.ModuleList([
            conv_bn(N_MEL, d, 5, 2, dims=1),
            conv_bn(d, d, 5, 2, dims=1),
            conv_bn(d, d, 5, 2, dims=1),
            conv_bn(d, d, 5, 1, dims=1),
            conv_bn(d, d, 5, 1, dims=1),
        ])
        self.strides = [2, 2, 2, 1, 1]
        self.att = nn.Linear(d, 1)
        self.fc = nn.Sequential(nn.Linear(2 * d, SPEECH_FEAT), nn.ReLU(inplace=True))

    def forward(self, mel, mask):
        x = (mel - MEL_MEAN) / MEL_STD
        m = mask.to(x.dtype)
        h = (x * m.unsqueeze(2)).transpose(1, 2)
        # re-mask after every layer so that padding (several audios in one batch) never leaks into
        # valid steps: an utterance gives the same vector alone or padded
        mr = m
        for conv, s in zip(self.convs, self.strides):
            if s == 2:
                mr = mr[:, 0::2]  # a reduced step is valid if its first source frame is
            h = conv(h) * mr.unsqueeze(1)  # ceil(T / 2) steps per stride-2 conv
        a = self.att(h.transpose(1, 2)).squeeze(2) + (mr - 1.0) * 1e4
        w = torch.softmax(a, dim=1)
        pooled = (h * w.unsqueeze(1)).sum(2)
        mx = (h + (mr.unsqueeze(1) - 1.0) * 1e4).amax(dim=2)
        return self.fc(torch.cat([pooled, mx], dim=1))


class SpeechProjector(nn.Module):
    def __init__(self):
        super().__init__()
        self.info = nn.Linear(SPEECH_FEAT, AUDIO_INFO_ROWS * HIDDEN)
        self.pad = nn.Parameter(torch.randn(HIDDEN) * 0.02)
        self.mode = nn.Embedding(4, HIDDEN)
        nn.init.normal_(self.mode.weight, std=0.02)

    def forward(self, g):
        return self.info(g).view(g.shape[0], AUDIO_INFO_ROWS, HIDDEN)


class SpeechEncoder(nn.Module):
    def __init__(self, backbone=None, proj=None):
        super().__init__()
        self.backbone = backbone or SpeechBackbone()
        self.proj = proj or SpeechProjector()

    def forward(self, audio_embeds, audio_attention_mask, audio_sizes, audio_projection_mode):
        g = self.backbone(audio_embeds, audio_attention_mask)
        info = self.proj(g)
        rows = place_rows(audio_sizes.to(torch.int64), info, self.proj.pad)
        mode = self.proj.mode(audio_projection_mode.reshape(1).clamp(0, 3))  # [1, H]
        return rows + mode


class Embedding(nn.Module):
    """input_ids -> inputs_embeds, scattering image/audio feature rows into their placeholders."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone())

    def forward(self, input_ids, image_features, audio_features):
        b, s = input_ids.shape
        ids = input_ids.reshape(-1)
        is_img = ids == IMAGE_TOKEN_ID
        is_aud = ids == AUDIO_TOKEN_ID
        tok = torch.where(is_img | is_aud, torch.zeros_like(ids), ids).clamp(0, self.table.shape[0] - 1)
        emb = self.table.index_select(0, tok)
        h = emb.shape[1]
        # one zero row appended so the gather is valid when a feature tensor has no rows
        img = torch.cat([image_features.reshape(-1, h), torch.zeros(1, h, dtype=emb.dtype)], 0)
        aud = torch.cat([audio_features.reshape(-1, h), torch.zeros(1, h, dtype=emb.dtype)], 0)
        img_i = (torch.cumsum(is_img.to(torch.int64), 0) - 1).clamp(min=0).clamp(max=img.shape[0] - 1)
        aud_i = (torch.cumsum(is_aud.to(torch.int64), 0) - 1).clamp(min=0).clamp(max=aud.shape[0] - 1)
        emb = torch.where(is_img.unsqueeze(1), img.index_select(0, img_i), emb)
        emb = torch.where(is_aud.unsqueeze(1), aud.index_select(0, aud_i), emb)
        return emb.reshape(b, s, h)


# ---------------------------------------------------------------------------------------------
# Decoder: the math of HF Phi3ForCausalLM (RMSNorm, RoPE, GQA, fused qkv, SiLU-gated MLP), with
# the same parameter names so the state dict loads into Phi3ForCausalLM for ORT-GenAI's builder.
# Written out here because it trains ~2x faster on CPU than the HF module and supports a prompt
# prefix shared by the whole batch (computed once, its keys/values broadcast to every sample).
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, h, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_cos_sin(positions, head_dim, theta):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    f = positions.to(torch.float32).unsqueeze(-1) * inv
    emb = torch.cat([f, f], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


class Attn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c["hidden_size"] // self.nh
        self.qkv_proj = nn.Linear(c["hidden_size"], (self.nh + 2 * self.nkv) * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, c["hidden_size"], bias=False)

    def forward(self, x, cos, sin, past=None, mask=None):
        b, s, _ = x.shape
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], dim=-1)
        q = q.view(b, s, self.nh, self.hd).transpose(1, 2)
        k = k.view(b, s, self.nkv, self.hd).transpose(1, 2)
        v = v.view(b, s, self.nkv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        present = (k, v)
        if past is not None:
            pk, pv = past
            k = torch.cat([pk.expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.expand(b, -1, -1, -1), v], dim=2)
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        if mask is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(o.transpose(1, 2).reshape(b, s, self.nh * self.hd)), present


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_up_proj = nn.Linear(c["hidden_size"], 2 * c["intermediate_size"], bias=False)
        self.down_proj = nn.Linear(c["intermediate_size"], c["hidden_size"], bias=False)

    def forward(self, x):
        g, u = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(g) * u)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.self_attn = Attn(c)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])

    def forward(self, x, cos, sin, past=None, mask=None):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, past, mask)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class Phi3Decoder(nn.Module):
    def __init__(self, c=DECODER):
        super().__init__()
        self.c = dict(c)
        self.model = Inner(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, embeds, past=None, offset=0):
        """embeds [b, s, H]. past: per-layer (k, v) of a prefix shared by the batch ([1, kv, P, hd]);
        returns (logits, presents)."""
        b, s, _ = embeds.shape
        hd = self.c["hidden_size"] // self.c["num_attention_heads"]
        pos = torch.arange(offset, offset + s)
        cos, sin = rope_cos_sin(pos, hd, self.c["rope_theta"])
        mask = None
        if past is not None:
            p = past[0][0].shape[2]
            # suffix queries see the whole prefix and the suffix causally
            mask = torch.ones(s, p + s, dtype=torch.bool)
            mask[:, p:] = torch.tril(torch.ones(s, s, dtype=torch.bool))
        x = embeds
        presents = []
        for i, layer in enumerate(self.model.layers):
            x, pr = layer(x, cos, sin, None if past is None else past[i], mask)
            presents.append(pr)
        return self.lm_head(self.model.norm(x)), presents


def hf_config(c=DECODER, eos=(3, 0), pad=0, bos=0):
    from transformers import Phi3Config
    return Phi3Config(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                      num_attention_heads=c["num_attention_heads"], num_key_value_heads=c["num_key_value_heads"],
                      max_position_embeddings=c["max_position_embeddings"],
                      original_max_position_embeddings=c["max_position_embeddings"], rope_theta=c["rope_theta"],
                      rms_norm_eps=c["rms_norm_eps"], tie_word_embeddings=False, pad_token_id=pad,
                      bos_token_id=bos, eos_token_id=list(eos), hidden_act="silu")
