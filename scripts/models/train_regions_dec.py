"""train_regions.py dec: the decoder fine-tune of version 3 (region citations); see train_regions.py."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from demo_common import (INTENTS, QUESTIONS, STRUCTURED, STRUCT_INTENT, SYSTEM_PROMPTS, PromptSpec, chat_prompt,
                         full_answer, ort_prompt)
from demo_model import (AUDIO_INFO_ROWS, HIDDEN, LOC_ROWS, VISION_INFO_ROWS, LocRows, number_table)  # noqa
import train_demo as td
from train_demo import IMAGE_TOKEN_ID, AUDIO_TOKEN_ID, label_to_facts


def regions_dict(r) -> dict:
    """regions array [6, 4] (train_regions.regions_array) -> full_answer's regions."""
    out = {}
    if r[0, 0] >= 0:
        out["lamp"] = tuple(int(v) for v in r[0])
    if r[1, 0] >= 0:
        out["gauge"] = tuple(int(v) for v in r[1])
    out["boxes"] = [tuple(int(v) for v in r[2 + i]) for i in range(3) if r[2 + i, 0] >= 0]
    return out


def slot_arrays(regions: np.ndarray):
    """GT region rows' inputs: coords [N, 5, 4], present [N, 5], count [N]."""
    c = regions[:, :5].astype(np.int64)
    present = c[:, :, 0] >= 0
    count = present[:, 2:5].sum(1)
    return torch.from_numpy(np.clip(c, 0, 1000)), torch.from_numpy(present), torch.from_numpy(count)


class RegionSampler(td.Sampler):
    def __init__(self, work, seed, piece_names, structured, swap: float, cite: bool = True, two_cam: float = 0.28,
                 boxes: float = 0.0, box_structured: float = 0.0):
        super().__init__(work, seed, piece_names, structured)
        self.boxes = boxes
        # share of box batches asked the alert rule's JSON box count instead of in prose
        self.box_structured = box_structured
        # scenes whose box count is hard to read (train_vfc: misread by the count probe), and the
        # share of box batches drawn from them where the batch's frame size has any
        self.hard = set()
        self.hard_share = 0.0
        self._many = {}
        self.cite = cite
        self.two_cam = two_cam
        self.regions = np.load(work / "scenes_train.npz")["regions"]
        self.swap = swap
        # partners for the count swap: same presence, lamp and gauge, a belt, another box count
        groups = {}
        for i, l in enumerate(self.labels):
            if l[2]:
                groups.setdefault(tuple(l[:5]), []).append(i)
        self.partners = groups

    def feat_index(self, c):
        l = self.labels[c]
        if not l[2] or self.rng.random() >= self.swap:
            return c
        if self.swap >= 1.0:
            # every belt scene: the features of a random scene of its group (any box count), so
            # the features say nothing about the count and only the count row does
            return self.rng.choice(self.partners[tuple(l[:5])])
        others = [j for j in self.partners[tuple(l[:5])] if self.labels[j][5] != l[5]]
        return self.rng.choice(others) if others else c

    def _image_batch(self, bs, short: bool):
        rng = self.rng
        n_cams = 2 if rng.random() < self.two_cam else 1
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.2 else None
        named = n_cams > 1 or rng.random() < 0.85
        names = [self.name() if named else None for _ in range(n_cams)]
        while len(set(names)) < len(names):
            names = [self.name() for _ in range(n_cams)]
        seps = (rng.choice([" ", "\n", "", "  "]), rng.choice(["", " ", "\n", "\n\n"]))
        first = [rng.randrange(len(self.labels)) for _ in range(n_cams - 1)]
        key = rng.choice(self.ntok_keys)
        pool = self.by_ntok[key]
        # box batches: one frame with two or three boxes, asked the count or the status
        box_batch = n_cams == 1 and rng.random() < self.boxes
        if box_batch:
            if key not in self._many:
                self._many[key] = [c for c in pool if self.labels[c][2] and self.labels[c][5] >= 2]
            pool = self._many[key] or pool
            hard = [c for c in pool if c in self.hard]
            if hard and self.hard_share > 0 and rng.random() < self.hard_share:
                pool = hard
        last = [rng.choice(pool) for _ in range(bs)]
        pad_override = [rng.randint(8, 96) for _ in range(n_cams)] if short else None
        multi_status = n_cams > 1 and rng.random() < 0.5
        first_feat = [self.feat_index(c) for c in first]
        box_json = box_batch and self.box_structured > 0 and rng.random() < self.box_structured
        out = []
        for s in last:
            cams = first + [s]
            feats = first_feat + [self.feat_index(s)]
            facts = [label_to_facts(self.labels[c]) for c in cams]
            if n_cams == 1 and not box_batch and self.structured and rng.random() < self.structured:
                segs_i = self._structured(cams, names, system, seps, facts[0], pad_override)
                out.append((self._with_loc(segs_i[0], cams, feats),) + tuple(segs_i[1:]))
                continue
            if box_json:
                segs_i = self._structured(cams, names, system, seps, facts[0], pad_override, kind="boxes")
                out.append((self._with_loc(segs_i[0], cams, feats),) + tuple(segs_i[1:]))
                continue
            intent = "status" if multi_status else rng.choice(("boxes", "status") if box_batch else INTENTS)
            spoken = rng.random() < 0.5
            clip = rng.choice(self.clips_by_intent[INTENTS.index(intent)]) if spoken else None
            q = None if spoken else rng.choice(QUESTIONS[intent])
            if self.structured and not spoken and intent != "status" and rng.random() < 0.15:
                q = STRUCTURED[rng.choice([k for k, v in STRUCT_INTENT.items() if v == intent])][0]
            spec = PromptSpec(cameras=names, question=q, spoken=spoken, system=system, seps=seps)
            ans = full_answer(intent, list(zip(names, facts)),
                              [regions_dict(self.regions[c]) for c in cams] if self.cite else None)
            ids = self.encode(ort_prompt(chat_prompt(spec)) + ans + "<|end|>")
            segs, a = self._expand(ids, cams, clip, n_cams, pad_override)
            out.append((self._with_loc(segs, cams, feats), a, None))
        return n_cams, out

    def _with_loc(self, segs, cams, feats):
        """Version 2's segments -> version 3's: LOC_ROWS region rows before each image's info rows
        (taken out of its pad rows at the real block lengths), the info rows of the feature index."""
        out, k = [], 0
        full = not any(s[0] == "vpad" and s[1] < 100 for s in segs)
        for s in segs:
            if s[0] == "vpad" and full:
                out.append(("vpad", s[1] - LOC_ROWS))
            elif s[0] == "vinfo":
                out.append(("vloc", cams[k]))
                out.append(("vinfo", feats[k]))
                k += 1
            else:
                out.append(s)
        # the shared prefix ends before the last image's region rows
        if ("split",) in out:
            i = out.index(("split",))
            j = len(out) - 1 - out[::-1].index(("vloc", cams[-1]))
            if j == i + 1:
                pass
            else:
                out.pop(i)
                j = len(out) - 1 - out[::-1].index(("vloc", cams[-1]))
                out.insert(j, ("split",))
        return out


class RegionModel(td.DemoModel):
    def __init__(self, vfeat, sfeat, locrows, coords, present, count):
        super().__init__(vfeat, sfeat)
        self.locrows = locrows
        self.register_buffer("coords", coords)
        self.register_buffer("present", present)
        self.register_buffer("count", count)

    def seg_embeds(self, segs):
        rows, tids = [], []
        plain = []
        for s in segs:
            if s[0] == "vloc":
                if plain:
                    r, t = super().seg_embeds(plain)
                    rows.append(r), tids.append(t)
                    plain = []
                c = s[1]
                r = self.locrows(self.coords[c:c + 1], self.present[c:c + 1], self.count[c:c + 1],
                                 self.dec.model.embed_tokens.weight)[0]
                rows.append(r)
                tids.append(torch.full((LOC_ROWS,), -1))
            else:
                plain.append(s)
        if plain:
            r, t = super().seg_embeds(plain)
            rows.append(r), tids.append(t)
        return torch.cat(rows, 0), torch.cat(tids, 0)


def make_locrows(tok, ctx: int = 3, count_words: bool = True) -> LocRows:
    """ctx 1 (no lead: the first row's context is the blank vector) was the first try; 3: each row
    keyed by the 3 tokens before it, the first rows by the answer's own " box:" tokens."""
    ids, ln = number_table(tok)
    lead = tuple(tok.encode(" box:").ids) if ctx > 1 else ()
    words = tuple(tok.token_to_id(t) for t in ("empty", "one", "two", "three")) if count_words else None
    return LocRows(ids, ln, tok.token_to_id(","), tok.token_to_id("]"), lead, ctx, words)


def train(work: Path, seed: int, steps: int, lr: float, bs: int = 16, init: str = "names_stage.pt",
          out: str = "regions_stage.pt", structured: float = 0.6, struct_weight: float = 4.0,
          mix_short: float = 0.85, piece_names: float = 0.5, swap: float = 0.33, name_weight: float = 3.0,
          new_lr_mult: float = 8.0, cite: bool = True, two_cam: float = 0.28, boxes: float = 0.0,
          end_weight: float = 1.0):
    """init: names_stage.pt (version 2's decoder, as imported) or a checkpoint of this stage."""
    torch.manual_seed(seed)
    vfeat, sfeat = td.precompute_features(work)
    sampler = RegionSampler(work, seed, piece_names, structured, swap, cite, two_cam, boxes)
    coords, present, count = slot_arrays(sampler.regions)
    model = RegionModel(vfeat, sfeat, make_locrows(sampler.tok), coords, present, count)
    model.feat_noise = 0.05 * float(vfeat.std())
    ck = torch.load(work / init, map_location="cpu")
    if "locrows" in ck:
        model.locrows.load_state_dict(ck["locrows"], strict=False)  # (count_ids: a buffer added later)
    model.dec.load_state_dict(ck["decoder"])
    model.vproj.load_state_dict(ck["vision_proj"])
    model.sproj.load_state_dict(ck["speech_proj"])
    td.log(f"regions: starts from {init} (step {ck.get('step')}), {steps} steps, lr {lr}, "
           f"two cameras {two_cam}, box batches {boxes}, short {mix_short}, end weight {end_weight}, seed {seed}")
    toks = (sampler.ids["<|assistant|>"], sampler.ids["<|end|>"])
    vocab = sampler.tok.get_vocab()
    marker_ids = ({i for t, i in vocab.items() if "[" in t}, {i for t, i in vocab.items() if "]" in t})
    decay, no_decay, new = [], [], []
    for n, p in model.named_parameters():
        if n.startswith("locrows."):
            new.append(p)
        else:
            (no_decay if p.dim() < 2 or "embed" in n or "pad" in n or "mode" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05, "lr": lr},
                             {"params": no_decay, "weight_decay": 0.0, "lr": lr},
                             {"params": new, "weight_decay": 0.0, "lr": lr * new_lr_mult}], betas=(0.9, 0.98))
    warm = 50

    def lr_at(s):
        return min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    eta = td.Eta(steps, "regions")
    run = [0.0, 0, 0, 0, 0]
    for step in range(1, steps + 1):
        r = sampler.rng.random()
        short = sampler.rng.random() < mix_short
        batch = sampler.text_batch(bs) if r < 0.08 else sampler.image_batch(bs, short)
        loss, n, c, nm, cm = td.batch_loss(model, batch, toks, marker_ids, name_weight, struct_weight, end_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run = [run[0] + loss.item() * n, run[1] + c, run[2] + n, run[3] + nm, run[4] + cm]
        if step % 25 == 0 or step == steps:
            eta.tick(step, f"loss {run[0] / run[2]:.4f} tok-acc {run[1] / run[2]:.4f} "
                           f"marker-acc {run[4] / max(1, run[3]):.4f}", every=45.0)
            run = [0.0, 0, 0, 0, 0]
        if step % 100 == 0 or step == steps:
            torch.save({"decoder": model.dec.state_dict(), "config": model.dec.c, "vision_proj": model.vproj.state_dict(),
                        "speech_proj": model.sproj.state_dict(), "locrows": model.locrows.state_dict(),
                        "step": step}, work / f"{out}.tmp")
            (work / f"{out}.tmp").replace(work / (out if step == steps else out.replace("_stage.pt", "_ckpt.pt")))


def train_vfc(work: Path, seed: int, steps: int, lr: float, init: str, out: str, boxes: float,
              distill: float = 1.0, bs: int = 16, two_cam: float = 0.28, structured: float = 0.6,
              aux: float = 1.0, box_structured: float = 0.5, hard_share: float = 0.5):
    """train_regions.py vfc: the vision backbone's last two convolutions (making the 14x14 and the
    7x7 maps) and its last layer (`fc`: pooled map -> feature vector) retrained under INIT's frozen
    decoder, projections and region rows; the earlier convolutions stay frozen. The loss is:
    - the decoder's on the region task mix (`boxes` of the one-frame batches belts of 2-3 boxes,
      `box_structured` of those asked the alert rule's JSON count, `hard_share` of those drawn
      from the hard scenes below);
    - `distill` x the squared distances (each over its variance) of the new feature vector and the
      new 14x14 and 7x7 maps (the localisation head reads them) to the old ones, on 64 random
      scenes per step: what the decoder and the head already read stays where it was;
    - `aux` x the count probe's (train_regions.py probe, frozen) cross-entropy on 64 belt scenes
      per step, half of them the hard ones: those whose old feature vector the probe misreads.
    The teacher is always version 2's backbone (WORK/vision_stage.pt); an INIT from this stage
    goes on from its layers. -> WORK/OUT: INIT's weights plus `vision_last` (export_demo.py puts
    it into vision.onnx)."""
    import copy
    import torch.nn.functional as F
    from demo_model import VisionBackbone
    torch.manual_seed(seed)
    _, sfeat = td.precompute_features(work, vision=False)  # the vision features: computed here
    bb = VisionBackbone()
    bb.load_state_dict(torch.load(work / "vision_stage.pt")["backbone"])
    bb.eval()
    scenes = np.load(work / "scenes_train.npz")
    views = scenes["views"]

    def pool(f7):
        return torch.cat([f7.mean(dim=(2, 3)), f7.amax(dim=(2, 3))], 1)

    with torch.no_grad():
        # the frozen part's output: the 28x28 map through the stride-2 convolution
        f14 = torch.cat([bb.net[4](bb.maps(td.to_input(views[i:i + 250]))[0]) for i in range(0, len(views), 250)])
        f14_old = bb.net[5](f14)
        f7_old = bb.net[6](f14_old)
        teacher = bb.fc(pool(f7_old))
    var, var7, var14 = float(teacher.var()), float(f7_old.var()), float(f14_old.var())
    probe = torch.load(work / "count_probe.pt")
    labels = torch.from_numpy(scenes["labels"])
    belt = torch.nonzero(labels[:, 2] == 1).flatten()
    hard = belt[(teacher[belt] @ probe["weight"].T + probe["bias"]).argmax(1) != labels[belt, 5]]
    td.log(f"vfc: {len(belt)} belt scenes, {len(hard)} of them misread by the count probe")
    last = copy.deepcopy(torch.nn.ModuleDict({"conv14": bb.net[5], "conv": bb.net[6], "fc": bb.fc}))

    def feats(x):
        return last["fc"](pool(last["conv"](last["conv14"](x))))

    last.eval()  # BatchNorm keeps its running statistics; its affine weights train
    sampler = RegionSampler(work, seed, 0.5, structured, 0.0, True, two_cam, boxes, box_structured)
    sampler.hard, sampler.hard_share = set(hard.tolist()), hard_share
    coords, present, count = slot_arrays(sampler.regions)
    model = RegionModel(teacher.clone(), sfeat, make_locrows(sampler.tok), coords, present, count)
    ck = torch.load(work / init, map_location="cpu")
    model.locrows.load_state_dict(ck["locrows"], strict=False)
    model.dec.load_state_dict(ck["decoder"])
    model.vproj.load_state_dict(ck["vision_proj"])
    model.sproj.load_state_dict(ck["speech_proj"])
    if "vision_last" in ck:  # a run of this stage: go on from its layers (the teacher stays version 2's)
        for k, m in last.items():
            m.load_state_dict(ck["vision_last"][k])
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    opt = torch.optim.AdamW(last.parameters(), lr=lr, weight_decay=0.0)
    td.log(f"vfc: last two conv blocks + fc, decoder from {init}, {len(views)} scenes, {steps} steps, lr {lr}, "
           f"box batches {boxes} ({box_structured} of them JSON, {hard_share} hard), distill {distill}, count {aux}")
    toks = (sampler.ids["<|assistant|>"], sampler.ids["<|end|>"])
    vocab = sampler.tok.get_vocab()
    marker_ids = ({i for t, i in vocab.items() if "[" in t}, {i for t, i in vocab.items() if "]" in t})
    eta = td.Eta(steps, "vfc")
    run = [0.0, 0.0, 0, 0.0]
    g = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        r = sampler.rng.random()
        batch = sampler.text_batch(bs) if r < 0.04 else sampler.image_batch(bs, sampler.rng.random() < 0.85)
        used = sorted({s[1] for it in batch[1] for s in it[0] if s[0] == "vinfo"})
        vfeat = teacher.clone()
        if used:
            idx = torch.tensor(used)
            vfeat[idx] = feats(f14[idx])
        model.vfeat = vfeat
        loss, *_ = td.batch_loss(model, batch, toks, marker_ids, 3.0, 4.0, 6.0)
        k = torch.randint(len(views), (64,), generator=g)
        m14 = last["conv14"](f14[k])
        m7 = last["conv"](m14)
        keep = (F.mse_loss(last["fc"](pool(m7)), teacher[k]) / var + F.mse_loss(m7, f7_old[k]) / var7
                + F.mse_loss(m14, f14_old[k]) / var14)
        bi = belt[torch.randint(len(belt), (64,), generator=g)]
        if len(hard):
            bi = torch.cat([bi[:32], hard[torch.randint(len(hard), (32,), generator=g)]])
        count_loss = F.cross_entropy(feats(f14[bi]) @ probe["weight"].T + probe["bias"], labels[bi, 5])
        opt.zero_grad()
        (loss + distill * keep + aux * count_loss).backward()
        opt.step()
        run = [run[0] + loss.item(), run[1] + keep.item(), run[2] + 1, run[3] + count_loss.item()]
        if step % 25 == 0 or step == steps:
            eta.tick(step, f"loss {run[0] / run[2]:.4f} drift {run[1] / run[2]:.4f} count {run[3] / run[2]:.4f}",
                     every=45.0)
            run = [0.0, 0.0, 0, 0.0]
    ck = dict(ck)
    ck["vision_last"] = {k: m.state_dict() for k, m in last.items()}
    ck["vfc_step"] = steps
    torch.save(ck, work / out)
