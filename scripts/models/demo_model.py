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


# ---------------------------------------------------------------------------------------------
# Version 3: localisation branch and region rows (train_regions.py)
# ---------------------------------------------------------------------------------------------
# vision.onnx (v3): the 8 info rows stay the last rows of each image block; before them come
# LOC_ROWS region rows: per slot (lamp, gauge, box 1..3 left to right) LOC_LEN rows holding the
# tokens of the marker's box text "x0,y0,x1,y1]" (each row: the token's decoder embedding + a
# learned map of the previous token's + a slot and a position code; a "blank" vector past the end
# and for an absent slot), then one box-count row. The decoder copies these tokens into
# `[cam:NAME box:...]` the way it copies camera names out of the prompt.
LOC_SLOTS = 5
LOC_LEN = 16
LOC_ROWS = LOC_SLOTS * LOC_LEN + 1
LOC_GRID = 28          # heatmap cells over the 224x224 pooled view (8 px each)
LOC_STRIDE = 8.0
LOC_CLASSES = 4        # lamp, gauge, box, belt


def _backbone_maps(self, x224):
    n = self.net
    h = x224
    for i in range(4):
        h = n[i](h)
    f28 = h
    h = n[5](n[4](h))
    f14 = h
    f7 = n[6](h)
    return f28, f14, f7


VisionBackbone.maps = _backbone_maps


class LocHead(nn.Module):
    """CenterNet-style head on the backbone's 28/14/7 maps -> [n, 8, 28, 28]: 4 centre heatmap
    logits (lamp, gauge, box, belt), then x/y offset of the centre inside its cell and log width /
    height in pooled-view pixels."""

    def __init__(self):
        super().__init__()
        self.r28 = conv_bn(64, 48, 1, 1)
        self.r14 = conv_bn(128, 48, 1, 1)
        self.r7 = conv_bn(128, 32, 1, 1)
        self.body = nn.Sequential(conv_bn(48 + 48 + 32 + 3, 64, 3, 1), conv_bn(64, 64, 3, 1))
        self.out = nn.Conv2d(64, LOC_CLASSES + 4, 1)
        nn.init.constant_(self.out.bias[:LOC_CLASSES], -2.2)

    def forward(self, f28, f14, f7, x224=None):
        a = self.r28(f28)
        b = F.interpolate(self.r14(f14), scale_factor=2.0, mode="nearest")
        c = F.interpolate(self.r7(f7), scale_factor=4.0, mode="nearest")
        px = F.avg_pool2d(x224, 8) if x224 is not None else torch.zeros_like(a[:, :3])
        return self.out(self.body(torch.cat([a, b, c, px], 1)))


def loc_targets_224(regions, ext):
    """regions [n, 6, 4] thousandths (-1 absent; lamp, gauge, box1..3, belt), ext [n, 2] frame
    extent (w, h) in pooled-view pixels -> heatmap [n, 4, G, G], regression [n, 4, G, G], mask [n, G, G]."""
    n = regions.shape[0]
    G = LOC_GRID
    hm = torch.zeros(n, LOC_CLASSES, G, G)
    reg = torch.zeros(n, 4, G, G)
    rm = torch.zeros(n, G, G)
    ys, xs = torch.meshgrid(torch.arange(G).float(), torch.arange(G).float(), indexing="ij")
    cls_of = (0, 1, 2, 2, 2, 3)
    for j in range(n):
        for s in range(6):
            r = regions[j, s]
            if r[0] < 0:
                continue
            x0, x1 = r[0] / 1000 * ext[j, 0], r[2] / 1000 * ext[j, 0]
            y0, y1 = r[1] / 1000 * ext[j, 1], r[3] / 1000 * ext[j, 1]
            cx, cy = (x0 + x1) / 2 / LOC_STRIDE, (y0 + y1) / 2 / LOC_STRIDE
            w, h = max(float(x1 - x0), 1.0), max(float(y1 - y0), 1.0)
            ix, iy = min(G - 1, int(cx)), min(G - 1, int(cy))
            sig = max(0.6, min(w, h) / LOC_STRIDE / 4)
            g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sig * sig))
            c = cls_of[s]
            hm[j, c] = torch.maximum(hm[j, c], g)
            hm[j, c, iy, ix] = 1.0
            reg[j, :, iy, ix] = torch.tensor([cx - ix, cy - iy, math.log(w), math.log(h)])
            rm[j, iy, ix] = 1.0
    return hm, reg, rm


def loc_decode(out, ext_w, ext_h, thr: float = 0.3):
    """Head output [n, 8, G, G] + frame extent in pooled-view pixels [n] ->
    coords int64 [n, 5, 4] (thousandths of the frame; slots lamp, gauge, box 1..3 left to right),
    present bool [n, 5], box count int64 [n]."""
    n = out.shape[0]
    G = LOC_GRID
    hm = torch.sigmoid(out[:, :LOC_CLASSES])
    reg = out[:, LOC_CLASSES:].reshape(n, 4, G * G)
    flat = hm.reshape(n, LOC_CLASSES, G * G)
    s_lamp, i_lamp = flat[:, 0].max(1)
    s_gauge, i_gauge = flat[:, 1].max(1)
    hb = hm[:, 2:3]
    peaks = hb * (F.max_pool2d(hb, 3, 1, 1) == hb).to(hb.dtype)
    s_box, i_box = peaks.reshape(n, G * G).topk(3, dim=1)
    scores = torch.cat([s_lamp.unsqueeze(1), s_gauge.unsqueeze(1), s_box], 1)       # [n, 5]
    idx = torch.cat([i_lamp.unsqueeze(1), i_gauge.unsqueeze(1), i_box], 1)          # [n, 5]
    r = reg.gather(2, idx.unsqueeze(1).expand(n, 4, 5))                              # [n, 4, 5]
    ix = (idx % G).to(torch.float32)
    iy = torch.div(idx, G, rounding_mode="floor").to(torch.float32)
    cx = (ix + r[:, 0]) * LOC_STRIDE
    cy = (iy + r[:, 1]) * LOC_STRIDE
    w, h = torch.exp(r[:, 2]), torch.exp(r[:, 3])
    ew, eh = ext_w.unsqueeze(1), ext_h.unsqueeze(1)
    x0 = (cx - w / 2) / ew * 1000
    x1 = (cx + w / 2) / ew * 1000
    y0 = (cy - h / 2) / eh * 1000
    y1 = (cy + h / 2) / eh * 1000
    c = torch.stack([x0, y0, x1, y1], 2).round().clamp(0, 1000)
    # keep x0 < x1, y0 < y1 (gemba drops empty boxes)
    c = torch.stack([c[..., 0].clamp(max=999), c[..., 1].clamp(max=999),
                     torch.maximum(c[..., 2], c[..., 0].clamp(max=999) + 1),
                     torch.maximum(c[..., 3], c[..., 1].clamp(max=999) + 1)], 2)
    present = scores > thr
    # boxes left to right: absent ones sort last
    bx = c[:, 2:5]
    bp = present[:, 2:5]
    key = torch.where(bp, bx[..., 0], torch.full_like(bx[..., 0], 1e6))
    _, order = key.topk(3, dim=1, largest=False)
    bx = bx.gather(1, order.unsqueeze(2).expand(n, 3, 4))
    bp = bp.gather(1, order)
    coords = torch.cat([c[:, :2], bx], 1).to(torch.int64)
    present = torch.cat([present[:, :2], bp], 1)
    count = bp.to(torch.int64).sum(1)
    return coords, present, count


class LocRows(nn.Module):
    """(coords [n, 5, 4], present [n, 5], count [n], decoder token table [V, H]) -> [n, LOC_ROWS, H].

    num_ids / num_len: for every value 0..1000 its tokens (BPE of the decimal text, up to 3, -1
    padded) and their number; comma / close: the ids of "," and "]"."""

    def __init__(self, num_ids: torch.Tensor, num_len: torch.Tensor, comma: int, close: int,
                 lead: tuple[int, ...] = (), ctx: int = 1, count_words: tuple[int, ...] | None = None):
        super().__init__()
        # the count row: the token of the count's word in the answer ("empty", "one", "two",
        # "three"), which the decoder can copy, plus a learned vector per count
        self.register_buffer("count_ids", torch.tensor(count_words if count_words else [-1] * 4, dtype=torch.int64))
        self.register_buffer("num_ids", num_ids.to(torch.int64))
        self.register_buffer("num_len", num_len.to(torch.int64))
        self.comma, self.close = comma, close
        # the answer's tokens just before the box text (" box:"): the context of its first tokens
        self.lead = list(lead)
        self.prevs = nn.ModuleList(nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(ctx))
        for m in self.prevs:
            nn.init.normal_(m.weight, std=0.02)
        self.slot = nn.Parameter(torch.randn(LOC_SLOTS, HIDDEN) * 0.02)
        self.pos = nn.Parameter(torch.randn(LOC_LEN, HIDDEN) * 0.02)
        self.blank = nn.Parameter(torch.randn(HIDDEN) * 0.02)
        self.count = nn.Parameter(torch.randn(4, HIDDEN) * 0.02)

    def token_ids(self, coords, present):
        """-> ids [n, 5, LOC_LEN], V (= blank) past the text's end and for absent slots."""
        n = coords.shape[0]
        c = coords.clamp(0, 1000)
        tok = self.num_ids.index_select(0, c.reshape(-1)).reshape(n, LOC_SLOTS, 4, 3)
        ln = self.num_len.index_select(0, c.reshape(-1)).reshape(n, LOC_SLOTS, 4)
        sep = torch.tensor([self.comma, self.comma, self.comma, self.close], dtype=torch.int64)
        cells = torch.cat([tok, sep.view(1, 1, 4, 1).expand(n, LOC_SLOTS, 4, 1)], 3)     # [n, 5, 4, 4]
        p = torch.arange(4, dtype=torch.int64).view(1, 1, 1, 4)
        valid = (p < ln.unsqueeze(3)) | (p == 3)
        cells = cells.reshape(n, LOC_SLOTS, 16)
        valid = valid.reshape(n, LOC_SLOTS, 16)
        rank = torch.cumsum(valid.to(torch.int64), 2) - 1                                  # packed position
        j = torch.arange(LOC_LEN, dtype=torch.int64).view(1, 1, LOC_LEN, 1)
        onehot = ((rank.unsqueeze(2) == j) & valid.unsqueeze(2)).to(torch.int64)          # [n, 5, L, 16]
        has = onehot.sum(3) > 0
        ids = (onehot * cells.unsqueeze(2)).sum(3)
        return ids, has & present.unsqueeze(2)

    def forward(self, coords, present, count, table):
        n = coords.shape[0]
        V = table.shape[0]
        ids, ok = self.token_ids(coords, present)
        ext = torch.cat([table, self.blank.unsqueeze(0)], 0)
        ids = torch.where(ok, ids, torch.full_like(ids, V))
        e = ext.index_select(0, ids.reshape(-1)).reshape(n, LOC_SLOTS, LOC_LEN, HIDDEN)
        rows = e + self.slot.view(1, LOC_SLOTS, 1, HIDDEN) + self.pos.view(1, 1, LOC_LEN, HIDDEN)
        # each row also carries the k tokens before it (keys for copying it after them)
        lead = [V] * max(0, len(self.prevs) - len(self.lead)) + self.lead
        for k, lin in enumerate(self.prevs, 1):
            head = torch.tensor(lead[len(lead) - k:], dtype=torch.int64).view(1, 1, k).expand(n, LOC_SLOTS, k)
            prev = torch.cat([head, ids[:, :, :-k]], 2)
            rows = rows + lin(ext.index_select(0, prev.reshape(-1)).reshape(n, LOC_SLOTS, LOC_LEN, HIDDEN))
        cnt = self.count.index_select(0, count.clamp(0, 3))
        cw = self.count_ids.index_select(0, count.clamp(0, 3))
        cnt = (cnt + ext.index_select(0, torch.where(cw >= 0, cw, torch.full_like(cw, V)))).unsqueeze(1)
        return torch.cat([rows.reshape(n, LOC_SLOTS * LOC_LEN, HIDDEN), cnt], 1)


def number_table(tok) -> tuple[torch.Tensor, torch.Tensor]:
    """BPE tokens of 0..1000 (a `tokenizers.Tokenizer`)."""
    ids = torch.full((1001, 3), -1, dtype=torch.int64)
    ln = torch.zeros(1001, dtype=torch.int64)
    for v in range(1001):
        t = tok.encode(str(v)).ids
        ids[v, :len(t)] = torch.tensor(t)
        ln[v] = len(t)
    return ids, ln


class VisionEncoderV3(nn.Module):
    """Version 3's vision graph: version 2's backbone + projector (unchanged) and the localisation
    branch; the region rows sit just before the 8 info rows of each image block."""

    def __init__(self, backbone, proj, head, rows, table, thr: float = 0.3, probe=None):
        super().__init__()
        self.backbone, self.proj, self.head, self.rows = backbone, proj, head, rows
        self.register_buffer("table", table.detach().clone())
        self.thr = thr
        # count row = max(localisation count, linear count probe on the feature vector)
        self.probe = nn.Linear(VISION_FEAT, 4)
        if probe is not None:
            self.probe.load_state_dict(probe)

    def forward(self, pixel_values, image_attention_mask, image_sizes):
        g = pixel_values[:, 0]
        x = F.avg_pool2d(g, 2)
        f28, f14, f7 = self.backbone.maps(x)
        h = self.backbone.fc(torch.cat([f7.mean(dim=(2, 3)), f7.amax(dim=(2, 3))], dim=1))
        info = self.proj(h)
        # the frame's extent: columns / rows of the global view that are not all white padding
        # (the last such column / row is the bicubic blend of frame and padding: not counted)
        cw = (g.amin(dim=(1, 2)) < 0.98).to(torch.float32).sum(1)
        ch = (g.amin(dim=(1, 3)) < 0.98).to(torch.float32).sum(1)
        ext_w = (cw - (cw < 447.5).to(torch.float32)) / 2.0
        ext_h = (ch - (ch < 447.5).to(torch.float32)) / 2.0
        coords, present, count = loc_decode(self.head(f28, f14, f7, x), ext_w.clamp(min=1.0),
                                            ext_h.clamp(min=1.0), self.thr)
        count = torch.maximum(count, self.probe(h).argmax(1))
        loc = self.rows(coords, present, count, self.table)
        counts = phi4_image_token_counts(image_attention_mask, image_sizes)
        return place_rows(counts, torch.cat([loc, info], 1), self.proj.pad)


class VisionEncoderCountFix(nn.Module):
    """Version 2's vision graph (same 8 info rows, same decoder) plus the localisation head used
    only to correct the box count in the feature vector: where a belt is found and the
    localisation counts more boxes than a linear probe reads from the feature vector, the vector
    is moved by the difference of the training scenes' class-mean vectors (more boxes minus the
    probe's count); everywhere else it is version 2's vector, unchanged."""

    def __init__(self, backbone, proj, head, probe_w, probe_b, means, thr: float = 0.3):
        super().__init__()
        self.backbone, self.proj, self.head = backbone, proj, head
        self.register_buffer("probe_w", probe_w.detach().clone())
        self.register_buffer("probe_b", probe_b.detach().clone())
        self.register_buffer("means", means.detach().clone())
        self.thr = thr

    def forward(self, pixel_values, image_attention_mask, image_sizes):
        g = pixel_values[:, 0]
        x = F.avg_pool2d(g, 2)
        f28, f14, f7 = self.backbone.maps(x)
        h = self.backbone.fc(torch.cat([f7.mean(dim=(2, 3)), f7.amax(dim=(2, 3))], dim=1))
        out = self.head(f28, f14, f7, x)
        cw = (g.amin(dim=(1, 2)) < 0.98).to(torch.float32).sum(1)
        ch = (g.amin(dim=(1, 3)) < 0.98).to(torch.float32).sum(1)
        ext_w = (cw - (cw < 447.5).to(torch.float32)) / 2.0
        ext_h = (ch - (ch < 447.5).to(torch.float32)) / 2.0
        _, _, count = loc_decode(out, ext_w.clamp(min=1.0), ext_h.clamp(min=1.0), self.thr)
        belt = torch.sigmoid(out[:, 3]).reshape(out.shape[0], -1).amax(1) > self.thr
        pc = (h @ self.probe_w.t() + self.probe_b).argmax(1)
        fix = belt & (count > pc)
        c = torch.where(fix, count, pc)
        # the smallest step along that difference (a quarter at a time) after which the probe
        # reads the localisation's count; the whole difference if none does
        d = self.means.index_select(0, c) - self.means.index_select(0, pc)
        cands = torch.stack([F.relu(h + t * d) for t in (0.25, 0.5, 0.75, 1.0)], 0)       # [4, n, F]
        reads = (cands @ self.probe_w.t() + self.probe_b).argmax(2) == c.unsqueeze(0)     # [4, n]
        reads = torch.cat([reads[:3], torch.ones_like(reads[3:])], 0).to(torch.int64)
        first = reads.argmax(0)                                                            # [n]
        moved = cands.gather(0, first.view(1, -1, 1).expand(1, h.shape[0], h.shape[1]))[0]
        h = torch.where(fix.unsqueeze(1), moved, h)
        info = self.proj(h)
        counts = phi4_image_token_counts(image_attention_mask, image_sizes)
        return place_rows(counts, info, self.proj.pad)
